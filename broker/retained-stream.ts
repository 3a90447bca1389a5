import { unpack } from 'msgpackr';
import { topicMatches } from '../shared/protocol/topics.js';

/** The Redis commands the retained stream needs (an ioredis client). */
export interface RetainedStore {
  hkeys(key: string): Promise<string[]>;
  hgetBuffer(key: string, field: string): Promise<Buffer | null>;
}

/** The hash aedes-persistence-redis keeps retained messages in: field the topic, value the packet in msgpack. */
export const RETAINED_HASH = 'retained';

/** The fields of a stored retained packet that Aedes reads. */
export interface RetainedPacket {
  cmd: 'publish';
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  retain?: boolean;
}

/**
 * The retained messages matching `patterns`, each read from Redis when Aedes takes it, once even
 * when several patterns match it.
 *
 * Why not aedes-persistence-redis' own stream: it reads the hash with HSCAN through an ioredis
 * scan stream, which reads ahead 16 batches of about 10 messages, and its generator is wrapped in
 * another stream with 16 more. For a 50 MB model in 256 KiB chunks that is about 48 MiB held per
 * subscribing client before the client has read any of it: 50 sites fetching a new model at once
 * through one node took it to 2.4 GiB (docs/scaling.md, 100 sites x 50 MB on two nodes). Here the
 * names come first (HKEYS: topics only, a few kilobytes), then one value at a time.
 */
export async function* retainedLazily(db: RetainedStore, patterns: readonly string[]): AsyncGenerator<RetainedPacket> {
  const topics = (await db.hkeys(RETAINED_HASH)).filter((topic) => patterns.some((p) => topicMatches(p, topic)));
  for (const topic of topics) {
    const value = await db.hgetBuffer(RETAINED_HASH, topic);
    // Cleared (an empty retained message) since the names were read.
    if (value === null) continue;
    yield unpack(value) as RetainedPacket;
  }
}
