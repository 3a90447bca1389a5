import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { ActiveRound } from '../aggregator/active-round.js';
import type { AckFields, AggregatorContext } from '../aggregator/aggregator-context.js';
import type { StoredModel } from '../aggregator/model-store.js';
import type { RoundRecord } from '../aggregator/round-journal.js';
import { RoundState } from '../aggregator/round-state.js';
import { creditChunksPerSender, UploadCollector } from '../aggregator/upload-collector.js';
import { handleUpdateDone } from '../aggregator/update-done-handler.js';
import { createUpdateInbound } from '../aggregator/update-inbound.js';
import { UpdateSpool } from '../aggregator/update-spool.js';
import { splitIntoChunks } from '../shared/bundle/chunking.js';
import { decodeBundle, encodeBundle } from '../shared/bundle/tensor-bundle.js';
import type { UpdateChunkMsg, UpdateDoneMsg, UpdateMeta } from '../shared/protocol/messages.js';
import { packMsg, unpackMsg } from '../shared/protocol/wire-codec.js';
import { createTopics } from '../shared/protocol/topics.js';
import { Counters } from '../shared/util/counters.js';
import { silentLogger } from '../shared/util/logger.js';
import { FakeClock } from './fake-clock.js';
import { tempDir, waitFor } from './helpers.js';

/**
 * Flow-control credit on the aggregator's side (aggregator/upload-collector.ts): the configured
 * windowChunks is shared by the uploads in progress, and when one ends the others are granted
 * their larger share at once. (test/uplink-credit.test.ts covers the agent's side.) And its answers
 * to update-done: each echoes the update-done's `query` (test/uplink-resend.test.ts: the agent's side).
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
  return { dir, acks, collector, state, ctx };
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

test('progress comes every quarter of the share the agent was told, also while the share now is larger', () => {
  // Prepare: 100 selected, windowChunks 256: the announcement told each 8 chunks. Only a has begun,
  // so the share now is the whole 256; a report every 64 chunks would never reach a sender that
  // stops at 8 and waits for credit.
  const selected = ['a', ...Array.from({ length: 99 }, (_, i) => `s${i}`)];
  const { dir, acks, collector } = setup(256, selected);
  try {
    const aChunks = chunks('a', update('a'));
    assert.ok(aChunks.length > 2);

    // Execute
    collector.chunk(aChunks[0]!, 'a');
    collector.chunk(aChunks[1]!, 'a');

    // Assert: reported at 2 stored (a quarter of 8), granting the share now.
    assert.deepEqual(acks, [{ agent: 'a', status: 'progress', upload: 'a-u1', stored: 2, window: 256 }]);
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

/** `agent`'s update-done for its upload `<agent>-u1` of `bundle`, numbered `query` (none: undefined). */
function doneMsg(agent: string, bundle: Buffer, query: number | undefined): UpdateDoneMsg {
  const total = chunks(agent, bundle).length;
  const sha256 = createHash('sha256').update(bundle).digest('hex');
  return {
    v: 1,
    type: 'update-done',
    round,
    agent,
    upload: `${agent}-u1`,
    total,
    bundleBytes: bundle.byteLength,
    sha256,
    ...(query === undefined ? {} : { query }),
  };
}

test('an incomplete answer to update-done echoes its query; the CRC notice, progress and later verdict carry none', async () => {
  // Prepare: a has sent every chunk but chunk 1, whose copy was damaged.
  const { dir, acks, collector } = setup(16, ['a']);
  try {
    const bundle = update('a');
    const all = chunks('a', bundle);
    for (const c of all) collector.chunk(c.seq === 1 ? { ...c, crc32: (c.crc32 + 1) >>> 0 } : c, 'a');
    const notice = acks.find((x) => x.status === 'incomplete');
    assert.ok(notice && notice.code !== undefined && notice.code !== null, 'the CRC notice');

    // Execute: two verdict queries, then an old agent's one (no number).
    collector.done(doneMsg('a', bundle, 1));
    collector.done(doneMsg('a', bundle, 2));
    collector.done(doneMsg('a', bundle, undefined));

    // Assert: each answer lists chunk 1 and echoes its own query; the old agent's has no query field.
    const answers = acks.filter((x) => x.status === 'incomplete' && x.code === undefined);
    assert.deepEqual(
      answers.map((x) => [x.query, x.missing]),
      [
        [1, [1]],
        [2, [1]],
        [undefined, [1]],
      ],
    );
    // On the wire an undefined field is left out: an old agent gets no `query` field at all.
    assert.equal('query' in (unpackMsg(packMsg(answers[2])) as object), false, 'no query asked, none echoed');

    // Execute: chunk 1 arrives whole; the upload completes on its own and is verified.
    collector.chunk(all[1]!, 'a');
    await waitFor('the verdict for a', () => acks.some((x) => x.status === 'accepted'), 30_000, 5);
    // Assert: the notice, the progress acks and the verdict reached on its own answer no update-done.
    for (const x of acks.filter((y) => !answers.includes(y))) assert.equal(x.query, undefined, `${x.status} ack carries no query`);
  } finally {
    dir.cleanup();
  }
});

test('an update-done after the verdict, or of a refused upload, gets the verdict again with its query echoed', async () => {
  // Prepare: a's update is accepted; b's upload is refused (chunks of the wrong size).
  const { dir, acks, collector, state, ctx } = setup(0);
  try {
    await sendWhole(collector, acks, 'a');
    const b = update('b');
    collector.chunk({ ...chunks('b', b)[0]!, chunkBytes: 32 }, 'b');
    const active = { state, uploads: collector } as unknown as ActiveRound;

    // Execute
    handleUpdateDone(ctx, active, doneMsg('a', update('a'), 3));
    handleUpdateDone(ctx, active, doneMsg('b', b, 2));

    // Assert
    assert.deepEqual(
      acks.slice(-2).map((x) => [x.agent, x.status, x.query]),
      [
        ['a', 'accepted', 3],
        ['b', 'rejected', 2],
      ],
    );
  } finally {
    dir.cleanup();
  }
});

test('an update-done refused before the collector (round not open) is answered rejected with its query echoed', () => {
  // Prepare: no round open.
  const acks: (AckFields & { agent: string })[] = [];
  const topics = createTopics('fl/test');
  const ctx = {
    config: { agents: ['a'], federation: 'f' },
    topics,
    sendAck: (_round: number, agent: string, ack: AckFields) => acks.push({ agent, ...ack }),
    reject: () => undefined,
  } as unknown as AggregatorContext;
  const journal = { data: { complete: false, rounds: [{ round: round - 1, outcome: 'aggregate' }] } };
  const inbound = createUpdateInbound({ ctx, current: () => null, journal: journal as never });
  const bundle = update('a');

  // Execute: a numbered update-done and an unnumbered one, as they come off the wire.
  for (const query of [7, undefined]) inbound({ topic: topics.update(round, 'a'), payload: packMsg(doneMsg('a', bundle, query)) } as never);

  // Assert
  assert.deepEqual(
    acks.map((x) => [x.status, x.code, x.query]),
    [
      ['rejected', 'FL_ROUND_CLOSED', 7],
      ['rejected', 'FL_ROUND_CLOSED', undefined],
    ],
  );
});

test('a restarted aggregator does not answer update-done for the round its journal will resume, and still refuses other rounds', () => {
  // Prepare: no round open yet; the journal left round 1 unfinished (outcome null), round 0 done.
  const acks: (AckFields & { agent: string })[] = [];
  const topics = createTopics('fl/test');
  const ctx = {
    config: { agents: ['a'], federation: 'f' },
    topics,
    log: silentLogger(),
    sendAck: (_round: number, agent: string, ack: AckFields) => acks.push({ agent, ...ack }),
    reject: () => undefined,
  } as unknown as AggregatorContext;
  const journal = {
    data: {
      complete: false,
      rounds: [
        { round: 0, outcome: 'aggregate' },
        { round: 1, outcome: null },
      ],
    },
  };
  const inbound = createUpdateInbound({ ctx, current: () => null, journal: journal as never });
  const bundle = update('a');
  const done = (r: number) => ({ ...doneMsg('a', bundle, 3), round: r });

  // Execute: an update-done for the round being resumed, then one for a round that is over.
  inbound({ topic: topics.update(1, 'a'), payload: packMsg(done(1)) } as never);
  inbound({ topic: topics.update(0, 'a'), payload: packMsg(done(0)) } as never);

  // Assert: silence for round 1 (a "closed" would end an upload the resumed round waits for); round 0 is refused.
  assert.deepEqual(
    acks.map((x) => [x.status, x.code, x.query]),
    [['rejected', 'FL_ROUND_CLOSED', 3]],
  );
});
