import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import mqemitterRedis from 'mqemitter-redis';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { retainedLazily, type RetainedStore } from './retained-stream.js';

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
/** Messages a node delivers at once (Aedes' default `concurrency` for its in-memory emitter). */
export const CLUSTER_DELIVERY_CONCURRENCY = 100;

type PersistenceCtor = new (options: Record<string, unknown>) => RedisPersistence;
const require = createRequire(import.meta.url);
/** The ioredis the persistence uses (its dependency): the node's one Redis connection for retained messages is shared with it. */
type RedisCtor = new (options: Record<string, unknown>) => RetainedStore;
const persistenceRequire = createRequire(require.resolve('aedes-persistence-redis/asyncPersistence.js'));

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

/**
 * Methods whose results Aedes 1.x pipes: aedes-persistence-redis 11 returns async generators from
 * them, Aedes wants streams. (The retained streams are this node's own, asStreams below.)
 */
const STREAMING = new Set(['outgoingStream', 'streamWill', 'getClientList']);

function asStreams(persistence: RedisPersistence, db: RetainedStore): RedisPersistence {
  return new Proxy(persistence, {
    get(target, key) {
      // Retained messages one at a time as Aedes takes them (broker/retained-stream.ts); a read-ahead
      // of one packet: Aedes' own pipe holds 16 more.
      if (key === 'createRetainedStreamCombi') return (patterns: string[]) => Readable.from(retainedLazily(db, patterns), { highWaterMark: 1 });
      if (key === 'createRetainedStream') return (pattern: string) => Readable.from(retainedLazily(db, [pattern]), { highWaterMark: 1 });
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
  // At most 100 messages in delivery at once, as Aedes' own emitter on one node. mqemitter-redis
  // sets no bound: a delivery ends only when its subscriber's socket has drained completely, which
  // never happens while a fan-in subscriber (the aggregator) is fed as fast as it reads, so the
  // deliveries already written piled up with their payloads (9,000 of 256 KiB, 2.1 GiB on the
  // aggregator's node, 100 sites x 50 MB: docs/scaling.md). With the bound, writing pauses at 100,
  // the socket drains and they end; later messages wait in the emitter's queue.
  const mq = mqemitterRedis({ ...redis, concurrency: CLUSTER_DELIVERY_CONCURRENCY });
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
  repairAfterDrops(mq, options.nodeId, log);
  await warnOnPubsubLimit(mq as unknown as EmitterInternals, options.redisUrl, log);
  const Persistence = require('aedes-persistence-redis/asyncPersistence.js') as PersistenceCtor;
  const Redis = persistenceRequire('ioredis') as { Redis: RedisCtor };
  const db = new Redis.Redis({ ...redis });
  const persistence = asStreams(new Persistence({ conn: db }), db);
  let closed: Promise<void> | null = null;
  log.info({ nodeId: options.nodeId, redisUrl: options.redisUrl }, 'cluster node: sharing subscriptions and retained messages through Redis');
  return {
    mq,
    persistence,
    closePersistence: () => (closed ??= persistence.destroy().catch(() => undefined)),
  };
}

/** What mqemitter-redis 7 keeps that the repair needs: the Redis channels of this node's subscriptions (channel or pattern -> listeners) and its two connections. */
interface EmitterInternals {
  _topics?: Record<string, number>;
  subConn?: { subscribe(...channels: string[]): Promise<unknown>; psubscribe(...patterns: string[]): Promise<unknown> };
  pubConn?: { config(op: 'GET', name: string): Promise<unknown> };
}

/**
 * Each time this node's subscriber connection is back after a drop (and ioredis has restored what
 * it knows), subscribe again to every channel the node's clients need, and say so: the messages
 * published while it was away did not reach this node's clients.
 */
function repairAfterDrops(mq: unknown, nodeId: string, log: Logger): void {
  const subConn = (mq as { subConn?: { on(event: 'close' | 'ready', f: () => void): void } }).subConn;
  let dropped = false;
  subConn?.on('close', () => (dropped = true));
  // On 'ready', not 'connect': a SUBSCRIBE before ioredis' ready check would break that check.
  subConn?.on('ready', () => {
    if (!dropped) return;
    dropped = false;
    log.warn(
      { nodeId },
      "cluster: Redis dropped this node's subscriber connection (client-output-buffer-limit pubsub?); messages published meanwhile did not reach its clients; re-subscribing its channels",
    );
    resubscribeAll(mq).then(
      (n) => log.info({ nodeId, ...n }, 'cluster: channels re-subscribed'),
      (err: Error) => log.error({ nodeId, err: err.message }, 'cluster: could not re-subscribe after a Redis drop'),
    );
  });
}

/**
 * Subscribe again to every Redis channel this node's MQTT subscriptions need. ioredis restores
 * after a reconnect only the channels whose SUBSCRIBE reply it had read; when Redis drops a
 * subscriber that is 32 MB behind, the replies of the newest SUBSCRIBEs are in that backlog, and a
 * second drop soon after the first loses more (seen in `bench:scale` at 300 sites on two nodes:
 * the node kept 2 of 114 channels, and 35 agents never heard an ack again). SUBSCRIBE is
 * idempotent in Redis, so asking for all of them is safe.
 */
export async function resubscribeAll(mq: unknown): Promise<{ channels: number; patterns: number }> {
  const e = mq as EmitterInternals;
  if (!e._topics || !e.subConn) return { channels: 0, patterns: 0 }; // not the mqemitter-redis this was written for
  const keys = Object.keys(e._topics);
  // mqemitter-redis turns MQTT's + and # into Redis' * and psubscribes those.
  const patterns = keys.filter((k) => k.includes('*'));
  const channels = keys.filter((k) => !k.includes('*'));
  if (channels.length) await e.subConn.subscribe(...channels);
  if (patterns.length) await e.subConn.psubscribe(...patterns);
  return { channels: channels.length, patterns: patterns.length };
}

export interface PubsubOutputLimit {
  hardBytes: number;
  softBytes: number;
  softSeconds: number;
}

/** The pubsub class of Redis' `client-output-buffer-limit` value ("normal 0 0 0 replica 268435456 67108864 60 pubsub 33554432 8388608 60"); null when absent. */
export function pubsubOutputLimit(value: string): PubsubOutputLimit | null {
  const words = value.trim().split(/\s+/);
  const at = words.indexOf('pubsub');
  if (at < 0 || at + 3 >= words.length) return null;
  const [hardBytes, softBytes, softSeconds] = words.slice(at + 1, at + 4).map(Number) as [number, number, number];
  if (![hardBytes, softBytes, softSeconds].every(Number.isFinite)) return null;
  return { hardBytes, softBytes, softSeconds };
}

/**
 * Warn when Redis may disconnect a node that falls behind. Redis' default limit for a pub/sub
 * client (32 MB, or 8 MB for 60 s) is a few hundred update chunks: a busy node (the one holding the
 * aggregator's session reads every upload) passes it, Redis drops its connection, and every message
 * published until it is back is lost for that node's clients although the sending node already
 * PUBACKed it (update chunks and update-done, eval reports, acks). The agents' resends repair the
 * updates, after `ackTimeoutMs`. A Redis that refuses CONFIG (managed services) is left unchecked.
 */
async function warnOnPubsubLimit(mq: EmitterInternals, redisUrl: string, log: Logger): Promise<void> {
  let reply: unknown;
  try {
    reply = await mq.pubConn?.config('GET', 'client-output-buffer-limit');
  } catch (err) {
    log.debug({ redisUrl, err: (err as Error).message }, 'cluster: could not read client-output-buffer-limit from Redis');
    return;
  }
  const value = Array.isArray(reply) && typeof reply[1] === 'string' ? reply[1] : '';
  const limit = pubsubOutputLimit(value);
  if (limit && (limit.hardBytes > 0 || limit.softBytes > 0))
    log.warn(
      { redisUrl, pubsub: limit },
      'cluster: Redis disconnects a node whose pub/sub backlog passes client-output-buffer-limit pubsub, and the messages meanwhile are lost; set "client-output-buffer-limit pubsub 0 0 0" (docs/how-it-works.md, broker cluster)',
    );
}
