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
 * names come first (HKEYS: topics only, a few kilobytes), then the values, RETAINED_READ_AHEAD ahead.
 */
export async function* retainedLazily(db: RetainedStore, patterns: readonly string[]): AsyncGenerator<RetainedPacket> {
  const topics = (await db.hkeys(RETAINED_HASH)).filter((topic) => patterns.some((p) => topicMatches(p, topic)));
  // A few reads in flight, so that Redis' round trip overlaps the delivery of the one before (one
  // at a time, 10 sites took 13 s instead of 7 to fetch a 50 MB model through two nodes).
  const ahead: Promise<Buffer | null>[] = [];
  let next = 0;
  const fill = () => {
    while (ahead.length < RETAINED_READ_AHEAD && next < topics.length) {
      const read = db.hgetBuffer(RETAINED_HASH, topics[next++]!);
      // Awaited below in turn; a client that leaves early must not leave a rejection unhandled.
      read.catch(() => undefined);
      ahead.push(read);
    }
  };
  fill();
  while (ahead.length > 0) {
    const value = await ahead.shift()!;
    fill();
    // Cleared (an empty retained message) since the names were read.
    if (value === null) continue;
    yield unpack(value) as RetainedPacket;
  }
}

/** Retained messages read ahead per subscribing client (of 256 KiB model chunks: 2 MiB). */
export const RETAINED_READ_AHEAD = 8;
