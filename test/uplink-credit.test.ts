import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sendUpdate } from '../edge-agent/uplink.js';
import { decodeMsgpack, packMsg } from '../shared/protocol/wire-codec.js';
import { silentLogger } from '../shared/util/logger.js';
import { MemoryHub } from '../shared/transport/memory-transport.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema, type AckMsg } from '../shared/protocol/messages.js';
import { createTopics } from '../shared/protocol/topics.js';

/**
 * Flow control must never stall an upload: an aggregator whose progress acks do not come (lost,
 * or an older aggregator without flow control) costs the sender one credit timeout, after which
 * it sends on at full speed until progress is reported again. (Before, every further chunk waited
 * a whole timeout: a 2,130-chunk VGG-19 update crawled at one chunk a minute.)
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
