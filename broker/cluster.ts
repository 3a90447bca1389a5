import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import mqemitterRedis from 'mqemitter-redis';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';

/** What several broker nodes share: Redis carries the messages between them (mqemitter-redis), the subscriptions and retained messages (aedes-persistence-redis). */
export interface ClusterOptions {
  /** redis://[user:password@]host:port[/db] */
  redisUrl: string;
  /** This node's id, unique in the cluster (Aedes' broker id). */
  nodeId: string;
  /** Aedes' heartbeat between nodes, ms: a node silent for 3 of them is dead and its clients' wills are published. The same on every node. Default 60000. */
  heartbeatIntervalMs?: number;
  /** How long a starting node waits for Redis, ms. Default 10000. */
  connectTimeoutMs?: number;
}

/** The async Redis persistence Aedes 1.x calls (the package's default export is the callback wrapper for Aedes 0.x). */
interface RedisPersistence {
  setup(broker: unknown): Promise<void>;
  destroy(): Promise<void>;
}
type PersistenceCtor = new (options: Record<string, unknown>) => RedisPersistence;
const require = createRequire(import.meta.url);

export interface ClusterParts {
  mq: ReturnType<typeof mqemitterRedis>;
  persistence: RedisPersistence;
  /** Close the persistence's Redis connections (Aedes closes `mq` itself). */
  closePersistence(): Promise<void>;
}

/** ioredis options from a redis:// URL. */
export function redisOptions(redisUrl: string): { host: string; port: number; username?: string; password?: string; db: number } {
  let url: URL;
  try {
    url = new URL(redisUrl);
  } catch {
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `cluster.redisUrl ${redisUrl} is not a URL (redis://host:port[/db])`);
  }
  if (url.protocol !== 'redis:') throw new FedlineError(ErrorCodes.CONFIG_INVALID, `cluster.redisUrl must start with redis:// (got ${url.protocol})`);
  const db = url.pathname.length > 1 ? Number(url.pathname.slice(1)) : 0;
  if (!Number.isInteger(db) || db < 0)
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `cluster.redisUrl: the database ${url.pathname.slice(1)} is not a number`);
  return {
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port ? Number(url.port) : 6379,
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
    db,
  };
}

/**
 * A client that connects to this node is alive: drop the wills it left on other nodes. Without
 * this, when a node dies, its clients' wills (an agent's retained `offline` status) are published
 * by a surviving node minutes later, after those clients already moved over and said `online`.
 */
export function dropWillsElsewhere(aedes: { id: string; brokers: Record<string, number>; persistence: unknown }, clientId: string, log: Logger): void {
  const persistence = aedes.persistence as { delWill(client: { id: string; brokerId: string }): Promise<unknown> };
  for (const brokerId of Object.keys(aedes.brokers))
    if (brokerId !== aedes.id)
      persistence
        .delWill({ id: clientId, brokerId })
        .catch((err: Error) => log.warn({ err: err.message, client: clientId }, 'cluster: could not drop an old will'));
}

/** Methods whose results Aedes 1.x pipes: aedes-persistence-redis 11 returns async generators from them, Aedes wants streams. */
const STREAMING = new Set(['createRetainedStream', 'createRetainedStreamCombi', 'outgoingStream', 'streamWill', 'getClientList']);

function asStreams(persistence: RedisPersistence): RedisPersistence {
  return new Proxy(persistence, {
    get(target, key) {
      const value = Reflect.get(target, key, target) as unknown;
      if (typeof value !== 'function') return value;
      const bound = (value as (...args: unknown[]) => unknown).bind(target);
      if (!STREAMING.has(String(key))) return bound;
      return (...args: unknown[]) => {
        const result = bound(...args) as { pipe?: unknown } & AsyncIterable<unknown>;
        return typeof result?.pipe === 'function' ? result : Readable.from(result);
      };
    },
  });
}

type StateEvents = { state: { on(e: string, f: (arg?: unknown) => void): void; off(e: string, f: (arg?: unknown) => void): void } };

/** Resolve once both Redis connections of the emitter are up; reject after `ms`. */
function redisReady(mq: StateEvents, ms: number, redisUrl: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const up = new Set<string>();
    const timer = setTimeout(() => {
      done();
      reject(new FedlineError(ErrorCodes.TRANSPORT, `cannot reach Redis at ${redisUrl} within ${ms} ms (cluster.redisUrl)`));
    }, ms);
    const on = (name: string) => () => {
      up.add(name);
      if (up.size === 2) {
        done();
        resolve();
      }
    };
    const sub = on('sub');
    const pub = on('pub');
    const done = () => {
      clearTimeout(timer);
      mq.state.off('subConnect', sub);
      mq.state.off('pubConnect', pub);
    };
    mq.state.on('subConnect', sub);
    mq.state.on('pubConnect', pub);
  });
}

/**
 * The Redis-backed message emitter and persistence for one node of a broker cluster, once Redis
 * answers. A Redis that goes away later is logged (each change, not each retry) while its client
 * reconnects; the node does not crash.
 */
export async function openCluster(options: ClusterOptions, log: Logger): Promise<ClusterParts> {
  const redis = redisOptions(options.redisUrl);
  const mq = mqemitterRedis({ ...redis });
  const state = (mq as unknown as StateEvents).state;
  let down = false;
  state.on('error', (err) => {
    if (!down) log.error({ err: (err as Error).message, redisUrl: options.redisUrl }, 'cluster: Redis connection lost; reconnecting');
    down = true;
  });
  state.on('pubConnect', () => {
    if (down) log.info({ redisUrl: options.redisUrl }, 'cluster: Redis connection back');
    down = false;
  });
  try {
    await redisReady(mq as unknown as StateEvents, options.connectTimeoutMs ?? 10_000, options.redisUrl);
  } catch (err) {
    // Its callback never comes while Redis is unreachable: close and go.
    mq.close(() => undefined);
    throw err;
  }
  const Persistence = require('aedes-persistence-redis/asyncPersistence.js') as PersistenceCtor;
  const persistence = asStreams(new Persistence({ ...redis }));
  let closed: Promise<void> | null = null;
  log.info({ nodeId: options.nodeId, redisUrl: options.redisUrl }, 'cluster node: sharing subscriptions and retained messages through Redis');
  return {
    mq,
    persistence,
    closePersistence: () => (closed ??= persistence.destroy().catch(() => undefined)),
  };
}
