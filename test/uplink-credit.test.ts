import { createHash } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sendUpdate } from '../edge-agent/uplink.js';
import { decodeMsgpack, packMsg } from '../shared/protocol/wire-codec.js';
import { silentLogger } from '../shared/util/logger.js';
import { MemoryHub } from '../shared/transport/memory-transport.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema, type AckMsg } from '../shared/protocol/messages.js';
import { createTopics } from '../shared/protocol/topics.js';

/**
 * Flow control must never stall an upload, nor let it run without a bound. An aggregator whose
 * progress acks never come (one without flow control) costs the sender one credit timeout, after
 * which it sends on at full speed until progress is reported again. (Before, every further chunk
 * waited a whole timeout: a 2,130-chunk VGG-19 update crawled at one chunk a minute.) One that did
 * report progress and then went quiet because chunks were lost (its connection dropped) is asked
 * where the upload stands: the lost chunks go again and the upload stays within its credit (before,
 * a hundred agents sent on without a bound and the broker held gigabytes: issue 14).
 */
const topics = createTopics('fl/test');

/** Stores chunks and gives a verdict on update-done, but never reports progress. */
function silentAggregator(hub: MemoryHub) {
  const t = hub.connect('aggregator');
  const seen = new Set<number>();
  const ack = (a: Partial<AckMsg>) =>
    t.publish(
      topics.ack(1, 'site-a'),
      packMsg({ v: 1, type: 'ack', round: 1, agent: 'site-a', upload: null, sha256: null, code: null, reason: null, missing: [], stored: 0, window: 0, ...a }),
      { qos: 1 },
    );
  return t.subscribe(topics.update(1, 'site-a'), (m) => {
    const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'update' });
    if (msg.type === 'update-chunk') seen.add(msg.seq);
    else if (msg.type === 'update-done') answerDone(ack, seen, msg);
  });
}

/** update-done as the aggregator answers it: accepted when every chunk is in, else incomplete with the missing ones. */
function answerDone(
  ack: (a: Partial<AckMsg>) => unknown,
  seen: ReadonlySet<number>,
  msg: { upload: string; sha256: string; total: number; query?: number | undefined },
) {
  const missing = Array.from({ length: msg.total }, (_, i) => i).filter((i) => !seen.has(i));
  void ack({
    status: missing.length ? 'incomplete' : 'accepted',
    upload: msg.upload,
    sha256: msg.sha256,
    missing,
    ...(msg.query !== undefined ? { query: msg.query } : {}),
  });
}

/**
 * Reports progress every 2 chunks stored with the window `credit`, but loses chunks `lose` the
 * first time they come (as when its connection dropped with them in flight). Records how far
 * beyond its last reported `stored` count the sender ever was.
 */
function lossyAggregator(hub: MemoryHub, credit: number, lose: ReadonlySet<number>) {
  const t = hub.connect('aggregator');
  const seen = new Set<number>();
  const lostOnce = new Set<number>();
  const state = { reported: 0, maxAhead: 0, queries: 0 };
  const ack = (a: Partial<AckMsg>) =>
    t.publish(
      topics.ack(1, 'site-a'),
      packMsg({ v: 1, type: 'ack', round: 1, agent: 'site-a', upload: null, sha256: null, code: null, reason: null, missing: [], stored: 0, window: 0, ...a }),
      { qos: 1 },
    );
  const ready = t.subscribe(topics.update(1, 'site-a'), (m) => {
    const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'update' });
    if (msg.type === 'update-chunk') {
      state.maxAhead = Math.max(state.maxAhead, msg.seq - state.reported);
      if (lose.has(msg.seq) && !lostOnce.has(msg.seq)) {
        lostOnce.add(msg.seq);
        return;
      }
      seen.add(msg.seq);
      if (seen.size - state.reported >= 2 && seen.size < msg.total) {
        state.reported = seen.size;
        void ack({ status: 'progress', upload: msg.upload, stored: seen.size, window: credit });
      }
    } else if (msg.type === 'update-done') {
      state.queries++;
      answerDone(ack, seen, msg);
    }
  });
  return { ready, state };
}

test('no progress acks: one credit timeout, then the upload goes on without waiting per chunk', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  await silentAggregator(hub);
  const agent = hub.connect('site-a');
  const sent = await sendUpdate(agent, topics, new Uint8Array(40 * 64).fill(7), silentLogger(), {
    round: 1,
    agent: 'site-a',
    chunkBytes: 64,
    maxInflight: 2,
    ackTimeoutMs: 300,
    windowChunks: 4,
  });
  assert.equal(sent.ack.status, 'accepted');
  assert.equal(sent.creditWaits, 1, 'one timed-out wait for credit, not one per chunk');
});

test('chunks lost with no progress since: the sender asks, resends them and stays within its credit', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const credit = 4;
  // Chunks 8-11 lost: the aggregator's stored count stops at 8 while the sender may run 4 ahead.
  const lossy = lossyAggregator(hub, credit, new Set([8, 9, 10, 11]));
  await lossy.ready;
  const agent = hub.connect('site-a');
  const bundle = new Uint8Array(40 * 64).map((_, i) => i % 251);
  const sent = await sendUpdate(agent, topics, bundle, silentLogger(), {
    round: 1,
    agent: 'site-a',
    chunkBytes: 64,
    maxInflight: 2,
    ackTimeoutMs: 300,
    windowChunks: credit,
  });
  assert.equal(sent.ack.status, 'accepted');
  assert.equal(sent.sha256, createHash('sha256').update(bundle).digest('hex'));
  assert.equal(sent.resentChunks, 4, 'the four lost chunks, each once');
  assert.equal(sent.creditTimeouts, 1, 'one timed-out wait: the answer to the query set the upload going again');
  assert.ok(lossy.state.maxAhead <= credit, `the sender ran ${lossy.state.maxAhead} chunks beyond the stored count (credit ${credit})`);
  assert.equal(lossy.state.queries, 2, 'one query at the stall, one at the end');
});
