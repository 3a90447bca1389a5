import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import mqemitterRedis from 'mqemitter-redis';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/** What several broker nodes share: Redis carries the messages between them (mqemitter-redis), the subscriptions and retained messages (aedes-persistence-redis). */
export interface ClusterOptions {
  /** redis://[user:password@]host:port[/db] */
  redisUrl: string;
  /** This node's id, unique in the cluster (Aedes' broker id). */
  nodeId: string;
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

/** The Redis-backed message emitter and persistence for one node of a broker cluster. */
export function clusterParts(options: ClusterOptions): ClusterParts {
  const redis = redisOptions(options.redisUrl);
  const mq = mqemitterRedis({ ...redis });
  const Persistence = require('aedes-persistence-redis/asyncPersistence.js') as PersistenceCtor;
  const persistence = asStreams(new Persistence({ ...redis }));
  let closed: Promise<void> | null = null;
  return {
    mq,
    persistence,
    closePersistence: () => (closed ??= persistence.destroy().catch(() => undefined)),
  };
}
