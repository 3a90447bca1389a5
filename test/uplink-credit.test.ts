import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sendUpdate } from '../edge-agent/uplink.js';
import { UploadCredit } from '../edge-agent/upload-credit.js';
import { decodeMsgpack, packMsg } from '../shared/protocol/wire-codec.js';
import { silentLogger } from '../shared/util/logger.js';
import { MemoryHub } from '../shared/transport/memory-transport.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema, type AckMsg } from '../shared/protocol/messages.js';
import { createTopics } from '../shared/protocol/topics.js';

/**
 * Flow control must never stall an upload, nor let a sender flood an overloaded path: an
 * aggregator whose progress acks do not come (late or lost) costs the sender a credit timeout
 * each time its allowance is used up, and each timeout doubles the allowance, so the number of
 * timeouts grows with the logarithm of the update's size. (Earlier, every further chunk waited a
 * whole timeout: a 2,130-chunk VGG-19 update crawled at one chunk a minute; then one timeout
 * lifted the bound altogether, and overloaded brokers filled up: docs/scaling.md.)
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
    else if (msg.type === 'update-done') {
      void ack({ status: seen.size === msg.total ? 'accepted' : 'rejected', upload: msg.upload, sha256: msg.sha256 });
    }
  });
}

test(
  'no progress acks: the allowance doubles at each credit timeout (4, 8, 16, 32, 64 chunks ahead for 40 chunks), never one wait per chunk',
  { timeout: 30_000 },
  async () => {
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
    // Waits at chunks 4, 8, 16 and 32 (nothing stored is ever reported), each ending in a timeout.
    assert.equal(sent.creditWaits, 4, 'log2(40 / 4) rounded up timed-out waits, not one per chunk and not just one');
    assert.equal(sent.creditTimeouts, 4);
  },
);

test('a progress ack after timeouts brings the allowance back to the granted credit', { timeout: 10_000 }, async () => {
  // A timeout long enough that a loaded machine cannot reach it between the two steps below.
  const credit = new UploadCredit(4, 1000, silentLogger(), 1);
  const stop = new AbortController();
  await credit.waitFor(4, stop.signal); // nothing stored, credit used up: times out, allowance 8
  assert.equal(credit.timeouts, 1);
  await credit.waitFor(7, stop.signal); // within the doubled allowance: no wait
  assert.equal(credit.waits, 1, 'no wait within the doubled allowance');
  credit.progress(4, 4); // the aggregator reports again: allowance back to 4 chunks past stored
  let released = false;
  const waiting = credit.waitFor(8, stop.signal).then(() => (released = true));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(released, false, 'chunk 8 is 4 past the 4 stored: it waits again');
  credit.progress(5, 4);
  await waiting;
  assert.equal(credit.timeouts, 1, 'released by the progress ack, not by a timeout');
  assert.equal(credit.waits, 2);
});
