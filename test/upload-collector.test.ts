import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { AckFields, AggregatorContext } from '../aggregator/aggregator-context.js';
import type { StoredModel } from '../aggregator/model-store.js';
import type { RoundRecord } from '../aggregator/round-journal.js';
import { RoundState } from '../aggregator/round-state.js';
import { creditChunksPerSender, UploadCollector } from '../aggregator/upload-collector.js';
import { UpdateSpool } from '../aggregator/update-spool.js';
import { splitIntoChunks } from '../shared/bundle/chunking.js';
import { decodeBundle, encodeBundle } from '../shared/bundle/tensor-bundle.js';
import type { UpdateChunkMsg, UpdateMeta } from '../shared/protocol/messages.js';
import { createTopics } from '../shared/protocol/topics.js';
import { Counters } from '../shared/util/counters.js';
import { silentLogger } from '../shared/util/logger.js';
import { FakeClock } from './fake-clock.js';
import { tempDir, waitFor } from './helpers.js';

/**
 * Flow-control credit on the aggregator's side (aggregator/upload-collector.ts): the configured
 * windowChunks is shared by the uploads in progress, and when one ends the others are granted
 * their larger share at once. (test/uplink-credit.test.ts covers the agent's side.)
 */

test('credit per sender: windowChunks shared by the senders, never below 8 chunks, 0 when off', () => {
  // Execute / Assert
  assert.equal(creditChunksPerSender(256, 1), 256);
  assert.equal(creditChunksPerSender(256, 10), 25);
  assert.equal(creditChunksPerSender(256, 100), 8, 'below 8, acks would outnumber chunks');
  assert.equal(creditChunksPerSender(256, 0), 256, 'no sender yet: the whole window');
  assert.equal(creditChunksPerSender(0, 3), 0, 'flow control off');
});

const round = 1;
const tensors = (v: number) => [{ name: 'w', shape: [64], dtype: 'float32' as const, data: new Float32Array(64).fill(v) }];

/** An update bundle of `agent` for round 1 on version 0 (64 floats: a few 64-byte chunks). */
function update(agent: string): Buffer {
  const meta: UpdateMeta = {
    kind: 'update',
    agent,
    round,
    baseVersion: 0,
    sampleCount: 10,
    epochs: 1,
    metricsBefore: null,
    metricsAfter: null,
    trainMs: 1,
    backend: 'none',
  };
  return encodeBundle(tensors(1), meta);
}

function chunks(agent: string, bundle: Buffer): UpdateChunkMsg[] {
  return [...splitIntoChunks(bundle, 64)].map((c) => ({
    v: 1,
    type: 'update-chunk',
    round,
    agent,
    upload: `${agent}-u1`,
    ...c,
    data: Uint8Array.from(c.data),
  }));
}

function setup(windowChunks: number, selected = ['a', 'b']) {
  const dir = tempDir('upload-collector');
  const spool = new UpdateSpool(join(dir.path, 'spool'));
  spool.ensureRound(round);
  const acks: (AckFields & { agent: string })[] = [];
  const clock = new FakeClock(1_000);
  const base = decodeBundle(encodeBundle(tensors(0), { kind: 'model' })).header.tensors;
  const ctx = {
    config: {
      chunkBytes: 64,
      windowChunks,
      maxUpdateBytes: 1 << 20,
      encoding: 'f32',
      delta: false,
      maxSamplesPerAgent: null,
      registeredSamples: {},
      registeredSamplesTolerance: 0.1,
    },
    topics: createTopics('fl/test'),
    spool,
    clock,
    log: silentLogger(),
    counters: new Counters(),
    emitEvent: () => undefined,
    reject: () => undefined,
    sendAck: (_round: number, agent: string, ack: AckFields) => acks.push({ agent, ...ack }),
  } as unknown as AggregatorContext;
  const state = new RoundState({
    round,
    kind: 'train',
    baseVersion: 0,
    selected,
    minClients: 1,
    deadlineAt: 60_000,
    startedAt: 0,
    targetAccuracy: null,
  });
  const record = { acceptedAt: {} } as RoundRecord;
  const collector = new UploadCollector({
    ctx,
    state,
    record,
    base: { version: 0, tensors: base } as StoredModel,
    federatedNames: ['w'],
    onVerdict: () => undefined,
  });
  return { dir, acks, collector, state };
}

test('when one upload ends, the upload still in progress is granted the larger credit at once', async () => {
  // Prepare: windowChunks 16 shared by two senders (8 each); b has sent one chunk.
  const { dir, acks, collector, state } = setup(16);
  try {
    const a = update('a');
    const aChunks = chunks('a', a);
    const bChunks = chunks('b', update('b'));
    assert.ok(aChunks.length > 2 && bChunks.length > 2);
    collector.chunk(bChunks[0]!, 'b');

    // Execute: a sends everything and asks for its verdict.
    for (const c of aChunks) collector.chunk(c, 'a');
    collector.done({
      v: 1,
      type: 'update-done',
      round,
      agent: 'a',
      upload: 'a-u1',
      total: aChunks.length,
      bundleBytes: a.byteLength,
      sha256: createHash('sha256').update(a).digest('hex'),
    });
    // The verdict comes after the bundle is verified and spooled (asynchronous file writes): wait for it.
    await waitFor('the verdict for a', () => acks.at(-1)?.status === 'accepted', 30_000, 5);

    // Assert: progress to a at a quarter of its 8-chunk share; b re-granted the whole 16 when a ended; a accepted.
    assert.ok(acks.some((x) => x.agent === 'a' && x.status === 'progress' && x.window === 8));
    assert.deepEqual(
      acks.filter((x) => x.agent === 'b'),
      [{ agent: 'b', status: 'progress', upload: 'b-u1', stored: 1, window: 16 }],
    );
    assert.equal(acks.at(-1)?.status, 'accepted');
    assert.equal(state.hasAccepted('a'), true);
  } finally {
    dir.cleanup();
  }
});

/** Send all of `agent`'s chunks and its update-done, and wait for its verdict. */
async function sendWhole(collector: UploadCollector, acks: { agent: string; status: string }[], agent: string): Promise<void> {
  const bundle = update(agent);
  const all = chunks(agent, bundle);
  for (const c of all) collector.chunk(c, agent);
  const sha256 = createHash('sha256').update(bundle).digest('hex');
  collector.done({ v: 1, type: 'update-done', round, agent, upload: `${agent}-u1`, total: all.length, bundleBytes: bundle.byteLength, sha256 });
  await waitFor(`the verdict for ${agent}`, () => acks.some((x) => x.agent === agent && x.status === 'accepted'), 30_000, 5);
}

test('an upload ending re-grants credit only to the senders whose share grows', async () => {
  // Prepare: windowChunks 16 shared by three senders: each gets the minimum, 8. b and c have sent a chunk.
  const { dir, acks, collector } = setup(16, ['a', 'b', 'c']);
  try {
    collector.chunk(chunks('b', update('b'))[0]!, 'b');
    collector.chunk(chunks('c', update('c'))[0]!, 'c');

    // Execute: a ends; two senders left, whose share is still 8.
    await sendWhole(collector, acks, 'a');
    // Assert: nothing to tell b and c (a progress ack each would change nothing).
    assert.deepEqual(
      acks.filter((x) => x.agent !== 'a'),
      [],
    );

    // Execute: b ends; c alone now, its share grows to 16.
    await sendWhole(collector, acks, 'b');
    // Assert: c is told at once.
    assert.deepEqual(
      acks.filter((x) => x.agent === 'c'),
      [{ agent: 'c', status: 'progress', upload: 'c-u1', stored: 1, window: 16 }],
    );
  } finally {
    dir.cleanup();
  }
});

test('without flow control (windowChunks 0) no progress is reported', () => {
  // Prepare
  const { dir, acks, collector } = setup(0);
  try {
    // Execute
    for (const c of chunks('a', update('a'))) collector.chunk(c, 'a');
    collector.chunk(chunks('b', update('b'))[0]!, 'b');

    // Assert
    assert.deepEqual(acks, []);
  } finally {
    dir.cleanup();
  }
});
