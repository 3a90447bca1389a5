import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sendUpdate } from '../edge-agent/uplink.js';
import { decodeMsgpack, packMsg } from '../shared/protocol/wire-codec.js';
import { silentLogger } from '../shared/util/logger.js';
import { MemoryHub } from '../shared/transport/memory-transport.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema, type AckMsg } from '../shared/protocol/messages.js';
import { createTopics } from '../shared/protocol/topics.js';

/**
 * What an agent resends: exactly the chunks the aggregator lacks, each once per loss. The
 * aggregator here answers as aggregator/upload-collector.ts does: a damaged chunk gets an
 * `incomplete` notice with FL_CHUNK_CRC as it arrives, an `update-done` gets `accepted` when every
 * chunk is stored, else `incomplete` with the missing ones.
 */
const topics = createTopics('fl/test');
const TOTAL = 12;

/** `spoil(seq, copy)`: 'crc' refuses that copy with a notice, 'drop' loses it without a word. */
async function aggregator(hub: MemoryHub, spoil: (seq: number, copy: number) => 'crc' | 'drop' | null) {
  const t = hub.connect('aggregator');
  const stored = new Set<number>();
  const copies = new Map<number, number>();
  const ack = (a: Partial<AckMsg>) =>
    t.publish(
      topics.ack(1, 'site-a'),
      packMsg({ v: 1, type: 'ack', round: 1, agent: 'site-a', upload: null, sha256: null, code: null, reason: null, missing: [], stored: 0, window: 0, ...a }),
      { qos: 1 },
    );
  await t.subscribe(topics.update(1, 'site-a'), (m) => {
    const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'update' });
    if (msg.type === 'update-chunk') {
      const copy = (copies.get(msg.seq) ?? 0) + 1;
      copies.set(msg.seq, copy);
      const fate = spoil(msg.seq, copy);
      if (fate === 'crc')
        void ack({ status: 'incomplete', upload: msg.upload, code: 'FL_CHUNK_CRC', reason: `chunk ${msg.seq}: CRC32 mismatch`, missing: [msg.seq] });
      else if (fate === null) stored.add(msg.seq);
    } else if (msg.type === 'update-done') {
      const missing = Array.from({ length: msg.total }, (_, i) => i).filter((i) => !stored.has(i));
      void ack({ status: missing.length ? 'incomplete' : 'accepted', upload: msg.upload, sha256: msg.sha256, missing });
    }
  });
  return copies;
}

function upload(hub: MemoryHub) {
  return sendUpdate(hub.connect('site-a'), topics, new Uint8Array(TOTAL * 64).fill(7), silentLogger(), {
    round: 1,
    agent: 'site-a',
    chunkBytes: 64,
    maxInflight: 2,
    ackTimeoutMs: 20_000,
  });
}

test('a chunk refused on arrival (CRC) is resent once, before the update-done, not again for the answer that crossed it', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const copies = await aggregator(hub, (seq, copy) => (seq === 3 && copy === 1 ? 'crc' : null));
  const sent = await upload(hub);
  assert.equal(sent.ack.status, 'accepted');
  assert.equal(copies.get(3), 2, 'chunk 3: the damaged copy and one resend');
  assert.equal(sent.resentChunks, 1);
  for (let seq = 0; seq < TOTAL; seq++) if (seq !== 3) assert.equal(copies.get(seq), 1, `chunk ${seq} sent once`);
});

test('a chunk lost without a word is listed as missing by the verdict query and resent once', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const copies = await aggregator(hub, (seq, copy) => (seq === 5 && copy === 1 ? 'drop' : null));
  const sent = await upload(hub);
  assert.equal(sent.ack.status, 'accepted');
  assert.equal(copies.get(5), 2);
  assert.equal(sent.resentChunks, 1);
});

test('a resent chunk that is damaged again is resent again, once per damage', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const copies = await aggregator(hub, (seq, copy) => (seq === 7 && copy <= 2 ? 'crc' : null));
  const sent = await upload(hub);
  assert.equal(sent.ack.status, 'accepted');
  assert.equal(copies.get(7), 3);
  assert.equal(sent.resentChunks, 2);
});
