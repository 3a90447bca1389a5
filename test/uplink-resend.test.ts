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
 * chunk is stored, else `incomplete` with the missing ones; with `echo` it echoes the update-done's
 * `query` as today's aggregator does, without it it answers as an aggregator older than that field.
 */
const topics = createTopics('fl/test');
const TOTAL = 12;

interface ScriptOptions {
  /** `spoil(seq, copy)`: 'crc' refuses that copy with a notice, 'drop' loses it without a word. */
  spoil: (seq: number, copy: number) => 'crc' | 'drop' | null;
  /** Echo the update-done's `query` in the answer (an aggregator that knows the field). */
  echo?: boolean;
  /**
   * Hold the answer to the first update-done until the second arrives (the agent, hearing nothing
   * within ackTimeoutMs, asked again), then send both: 'oldest-first' or 'newest-first'.
   */
  holdFirst?: 'oldest-first' | 'newest-first';
}

async function aggregator(hub: MemoryHub, o: ScriptOptions) {
  const t = hub.connect('aggregator');
  const stored = new Set<number>();
  const copies = new Map<number, number>();
  /** The `query` of every update-done, in arrival order (null: none). */
  const queries: (number | null)[] = [];
  let held: Partial<AckMsg> | null = null;
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
      const fate = o.spoil(msg.seq, copy);
      if (fate === 'crc')
        void ack({ status: 'incomplete', upload: msg.upload, code: 'FL_CHUNK_CRC', reason: `chunk ${msg.seq}: CRC32 mismatch`, missing: [msg.seq] });
      else if (fate === null) stored.add(msg.seq);
    } else if (msg.type === 'update-done') {
      queries.push(msg.query ?? null);
      const missing = Array.from({ length: msg.total }, (_, i) => i).filter((i) => !stored.has(i));
      const answer: Partial<AckMsg> = {
        status: missing.length ? 'incomplete' : 'accepted',
        upload: msg.upload,
        sha256: msg.sha256,
        missing,
        ...(o.echo ? { query: msg.query } : {}),
      };
      if (o.holdFirst && queries.length === 1) held = answer;
      else if (o.holdFirst && queries.length === 2) {
        const both = o.holdFirst === 'oldest-first' ? [held!, answer] : [answer, held!];
        void ack(both[0]!).then(() => ack(both[1]!));
      } else void ack(answer);
    }
  });
  return { copies, queries };
}

function upload(hub: MemoryHub, ackTimeoutMs = 20_000) {
  return sendUpdate(hub.connect('site-a'), topics, new Uint8Array(TOTAL * 64).fill(7), silentLogger(), {
    round: 1,
    agent: 'site-a',
    chunkBytes: 64,
    maxInflight: 2,
    ackTimeoutMs,
  });
}

test('a chunk refused on arrival (CRC) is resent once, before the update-done, not again for the answer that crossed it', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const { copies } = await aggregator(hub, { spoil: (seq, copy) => (seq === 3 && copy === 1 ? 'crc' : null) });
  const sent = await upload(hub);
  assert.equal(sent.ack.status, 'accepted');
  assert.equal(copies.get(3), 2, 'chunk 3: the damaged copy and one resend');
  assert.equal(sent.resentChunks, 1);
  for (let seq = 0; seq < TOTAL; seq++) if (seq !== 3) assert.equal(copies.get(seq), 1, `chunk ${seq} sent once`);
});

test('a chunk lost without a word is listed as missing by the verdict query and resent once', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const { copies } = await aggregator(hub, { spoil: (seq, copy) => (seq === 5 && copy === 1 ? 'drop' : null) });
  const sent = await upload(hub);
  assert.equal(sent.ack.status, 'accepted');
  assert.equal(copies.get(5), 2);
  assert.equal(sent.resentChunks, 1);
});

test('a resent chunk that is damaged again is resent again, once per damage', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const { copies } = await aggregator(hub, { spoil: (seq, copy) => (seq === 7 && copy <= 2 ? 'crc' : null) });
  const sent = await upload(hub);
  assert.equal(sent.ack.status, 'accepted');
  assert.equal(copies.get(7), 3);
  assert.equal(sent.resentChunks, 2);
});

test('an update-done carries its query number and the answer echoing it drives the one resend', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const { copies, queries } = await aggregator(hub, { spoil: (seq, copy) => (seq === 5 && copy === 1 ? 'drop' : null), echo: true });
  const sent = await upload(hub);
  assert.equal(sent.ack.status, 'accepted');
  assert.deepEqual(queries, [1, 2], 'numbered 1, 2 within the upload');
  assert.equal(copies.get(5), 2);
  assert.equal(sent.resentChunks, 1);
});

// Two update-done outstanding: the first answer comes only after the agent, hearing nothing within
// ackTimeoutMs, asked again. Both answers list chunk 5 (each was given before the resend arrived);
// the one handled first resends it, the other echoes a query that resend already answered.
for (const order of ['oldest-first', 'newest-first'] as const)
  test(`two verdict queries outstanding, both answered incomplete (${order}): the missing chunk is resent once`, { timeout: 30_000 }, async () => {
    const hub = new MemoryHub();
    const { copies, queries } = await aggregator(hub, { spoil: (seq, copy) => (seq === 5 && copy === 1 ? 'drop' : null), echo: true, holdFirst: order });
    // Short enough for the held answer to make the agent ask again; a later timeout under load only asks once more.
    const sent = await upload(hub, 300);
    assert.equal(sent.ack.status, 'accepted');
    assert.deepEqual(queries.slice(0, 3), [1, 2, 3], 'asked twice before any answer, then once after the resend');
    assert.equal(copies.get(5), 2, 'chunk 5: the lost copy and one resend, not one per answer');
    assert.equal(sent.resentChunks, 1);
    for (let seq = 0; seq < TOTAL; seq++) if (seq !== 5) assert.equal(copies.get(seq), 1, `chunk ${seq} sent once`);
  });

test('an aggregator that echoes no query: every incomplete answer is acted on, as before the field', { timeout: 30_000 }, async () => {
  const hub = new MemoryHub();
  const { copies, queries } = await aggregator(hub, { spoil: (seq, copy) => (seq === 5 && copy === 1 ? 'drop' : null), holdFirst: 'oldest-first' });
  const sent = await upload(hub, 300);
  assert.equal(sent.ack.status, 'accepted');
  assert.deepEqual(queries.slice(0, 2), [1, 2]);
  // Without the number the agent cannot tell the second answer is stale: it resends for each (the old behaviour, kept for old aggregators).
  assert.equal(copies.get(5), 3);
  assert.equal(sent.resentChunks, 2);
});
