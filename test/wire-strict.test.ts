import { releasedManifestSchema } from '../shared/protocol/mes.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { downloadModel } from '../edge-agent/model-downlink.js';
import { sendUpdate } from '../edge-agent/uplink.js';
import { decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import { FLOAT_FIELDS } from '../shared/protocol/msgpack-writer.js';
import { eventSchemas, type MesEventType } from '../shared/protocol/mes.js';
import { silentLogger } from '../shared/util/logger.js';
import { modelMetaSchema, roundAnnouncementSchema, SUPPORTED_VERSIONS, type ModelMeta, type UpdateMeta } from '../shared/protocol/messages.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { bundleTensors, decodeBundle, encodeBundle } from '../shared/bundle/tensor-bundle.js';
import { createTopics } from '../shared/protocol/topics.js';
import { strictUnpack, WireFloat } from './strict-msgpack.js';
import { REPO_ROOT, startAedes, startFederation, tempDir, waitFor } from './helpers.js';
import * as spec from './wire-spec.js';

const topics = createTopics('fl/test');

interface Seen {
  topic: string;
  payload: Buffer;
}

/** Bundle headers: the msgpack map between byte 8 and 8 + H. */
function bundleHeader(bundle: Buffer): unknown {
  return strictUnpack(bundle.subarray(8, 8 + bundle.readUInt32LE(4)), { tagFloats: true });
}

/** Concatenated chunk data per key (model version, or update upload), in seq order, once every chunk is in. */
function reassemble(chunks: { key: string; seq: number; total: number; data: Uint8Array }[]): Map<string, Buffer> {
  const byKey = new Map<string, Map<number, Uint8Array>>();
  const totals = new Map<string, number>();
  for (const c of chunks) {
    if (!byKey.has(c.key)) byKey.set(c.key, new Map());
    byKey.get(c.key)!.set(c.seq, c.data);
    totals.set(c.key, c.total);
  }
  const out = new Map<string, Buffer>();
  for (const [key, parts] of byKey) {
    const total = totals.get(key)!;
    if (parts.size !== total) continue;
    out.set(key, Buffer.concat(Array.from({ length: total }, (_, i) => parts.get(i)!)));
  }
  return out;
}

/** The rogue member site-c: an incomplete upload (update-done with a chunk missing), then a NaN update (rejected), then offline. */
async function rogueRound(rogue: MqttTransport, annPayload: Buffer): Promise<void> {
  const ann = decodeMsgpack(annPayload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: topics.round(), what: 'round' });
  const update = topics.update(ann.round, 'site-c');
  const chunkBytes = ann.chunkBytes;
  const bundle = await downloadModel(rogue, topics, ann.base, silentLogger(), { maxModelBytes: 1 << 30, stallMs: 10_000 });
  const model = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
  const tensors = bundleTensors(model).map((t) => ({ ...t, data: new Float32Array(t.data.length).fill(Number.NaN) }));
  const meta: UpdateMeta = {
    kind: 'update',
    agent: 'site-c',
    round: ann.round,
    baseVersion: ann.base.version,
    sampleCount: 10,
    epochs: 1,
    metricsBefore: null,
    metricsAfter: null,
    trainMs: 1,
    backend: 'none',
  };
  const updateBundle = encodeBundle(tensors, meta);
  // The incomplete upload carries finite values (a NaN in its first chunk would be refused at once).
  const finiteBundle = encodeBundle(bundleTensors(model), meta);
  const total = Math.ceil(finiteBundle.byteLength / chunkBytes);
  assert.ok(total >= 2);
  // Only the first chunk, then update-done: the aggregator answers `incomplete` with the missing list.
  const data = finiteBundle.subarray(0, chunkBytes);
  const head = { v: 1, type: 'update-chunk', round: ann.round, agent: 'site-c', upload: 'strict1', total, bundleBytes: finiteBundle.byteLength, chunkBytes };
  const acks: string[] = [];
  await rogue.subscribe(topics.ack(ann.round, 'site-c'), (m) => acks.push(String((strictUnpack(m.payload) as { status: string }).status)));
  await rogue.publish(update, packMsg({ ...head, seq: 0, crc32: crc32(data), data }));
  await rogue.publish(
    update,
    packMsg({
      v: 1,
      type: 'update-done',
      round: ann.round,
      agent: 'site-c',
      upload: 'strict1',
      total,
      bundleBytes: finiteBundle.byteLength,
      sha256: 'c'.repeat(64),
    }),
  );
  await waitFor('the incomplete ack', () => acks.includes('incomplete'));
  // The whole update, full of NaN: rejected.
  await sendUpdate(rogue, topics, updateBundle, silentLogger(), { round: ann.round, agent: 'site-c', chunkBytes, maxInflight: 4, ackTimeoutMs: 5000 });
  // Leave (a status without `samples`, as the docs allow), so that the evaluation round does not wait for site-c.
  await rogue.publish(
    topics.status('site-c'),
    encodeJson({ v: 1, agent: 'site-c', state: 'offline', round: null, progress: null, detail: null, backend: null, ts: Date.now() }),
    { retain: true },
  );
}

test(
  'every message type of a real federation decodes strictly as docs/protocol.md types it: ints, float64s, nil only where nullable, no undocumented field',
  { timeout: 180_000 },
  async () => {
    const dir = tempDir('wire-strict');
    const broker = await startAedes();
    const seen: Seen[] = [];
    const observer = await MqttTransport.connect({ url: broker.url, clientId: 'wire-strict-observer', logger: silentLogger() });
    await observer.subscribe('fl/test/#', (m) => seen.push({ topic: m.topic, payload: Buffer.from(m.payload) }));
    const rogue = await MqttTransport.connect({ url: broker.url, clientId: 'wire-strict-site-c', logger: silentLogger() });
    // A status without `samples` (optional in the docs): the aggregator must still count site-c as online and select it.
    await rogue.publish(
      topics.status('site-c'),
      encodeJson({ v: 1, agent: 'site-c', state: 'idle', round: null, progress: null, detail: null, backend: null, ts: Date.now() }),
      {
        retain: true,
      },
    );
    const fed = await startFederation({
      url: broker.url,
      dir: dir.path,
      agents: ['site-a', 'site-b'],
      extraMembers: ['site-c'],
      minClients: 2,
      waitForAgentsMs: 5000,
      aggregator: { windowChunks: 16 },
    });
    let attack: Promise<void> | null = null;
    await rogue.subscribe(topics.round(), (m) => {
      const a = strictUnpack(m.payload) as { state: string; round: number; selected: string[] };
      if (attack || a.state !== 'open' || a.round !== 1) return;
      assert.ok(a.selected.includes('site-c'), 'site-c, whose status has no samples, was selected');
      attack = rogueRound(rogue, Buffer.from(m.payload));
    });
    // Should the evaluation round start before site-c's offline status arrived, site-c reports like an agent without a test split would not: with metrics.
    await rogue.subscribe(topics.round(), (m) => {
      const a = strictUnpack(m.payload) as { state: string; round: number; kind: string; selected: string[]; base: { version: number } };
      if (a.state !== 'open' || a.kind !== 'evaluate' || !a.selected.includes('site-c')) return;
      const metrics = {
        samples: 2,
        loss: 1,
        accuracy: 0.5,
        balancedAccuracy: 0.5,
        confusion: [
          [1, 0],
          [1, 0],
        ],
        precision: [0.5, null],
        recall: [1, 0],
      };
      void rogue.publish(
        topics.update(a.round, 'site-c'),
        packMsg({ v: 1, type: 'eval', round: a.round, agent: 'site-c', baseVersion: a.base.version, metrics, downloadedBytes: 0 }),
      );
    });
    try {
      await observer.publish(topics.command('resume'), encodeJson({ v: 1, requestId: 'strict-2', by: 'wire-strict' }));
      const result = await fed.aggregator.aggregator.run();
      await waitFor('the rogue round', () => attack !== null);
      await attack;
      assert.equal(result.rounds[0]!.outcome, 'aggregate');
      await observer.publish(topics.command('model-manifest'), encodeJson({ v: 1, requestId: 'strict-1' }));
      await waitFor('model-manifest event seen', () => seen.some((s) => s.topic === topics.event('model-manifest')));
      await waitFor('federation-completed seen', () => seen.some((s) => s.topic === topics.event('federation-completed')));
      checkAll(seen);
    } finally {
      await fed.stop();
      await rogue.close();
      await observer.close();
      await broker.close();
      dir.cleanup();
    }
  },
);

/** Decode and type-check everything seen; assert that every message type and every variant came by. */
function checkAll(seen: Seen[]): void {
  const problems: string[] = [];
  const kinds = new Set<string>();
  const check = (what: string, value: unknown, type: spec.WireType, json = false) => {
    kinds.add(what);
    for (const p of spec.wireProblems(value, type, json)) problems.push(`${what}: ${p}`);
  };
  const modelChunks: { key: string; seq: number; total: number; data: Uint8Array }[] = [];
  const updateChunks: typeof modelChunks = [];
  for (const { topic, payload } of seen) {
    if (payload.byteLength === 0) continue; // a cleared retained message
    const rel = topic.slice('fl/test/'.length).split('/');
    if (rel[0] === 'round' && rel.length === 1) {
      const a = strictUnpack(payload, { tagFloats: true }) as { state: string; kind: string };
      check(`round announcement ${a.state} ${a.kind}`, a, spec.roundAnnouncement);
    } else if (rel[0] === 'model' && rel[1] === 'latest') {
      check('model manifest', JSON.parse(payload.toString()), spec.modelManifest, true);
    } else if (rel[0] === 'model' && rel[1] === 'released') {
      // JSON for people and the MES: its strict schema is the documented one (docs/topics.md, released model).
      const parsed = releasedManifestSchema.safeParse(JSON.parse(payload.toString()));
      if (!parsed.success) problems.push(`released manifest: ${parsed.error.message}`);
    } else if (rel[0] === 'model') {
      const c = strictUnpack(payload, { tagFloats: true }) as { version: number; seq: number; total: number; data: Uint8Array };
      check('model chunk', c, spec.modelChunk);
      modelChunks.push({ key: String(c.version), seq: c.seq, total: c.total, data: c.data });
    } else if (rel[0] === 'round' && rel[2] === 'update') {
      const m = strictUnpack(payload, { tagFloats: true }) as { type: string; upload: string; seq: number; total: number; data: Uint8Array };
      if (m.type === 'update-chunk') {
        check('update chunk', m, spec.updateChunk);
        updateChunks.push({ key: m.upload, seq: m.seq, total: m.total, data: m.data });
      } else check(m.type, m, m.type === 'eval' ? spec.evalReport : m.type === 'bn-stats' ? spec.bnStats : spec.updateDone);
    } else if (rel[0] === 'round' && rel[2] === 'ack') {
      const a = strictUnpack(payload, { tagFloats: true }) as { status: string; code: unknown; sha256: unknown; missing: unknown[]; stored: number };
      check(`ack ${a.status}`, a, spec.ack);
      // Nullability per status, as the table in docs/protocol.md (Ack) has it.
      const ok = {
        accepted: a.code === null && typeof a.sha256 === 'string',
        rejected: typeof a.code === 'string',
        incomplete: a.code === null && a.missing.length > 0,
        progress: a.code === null && a.sha256 === null && a.stored > 0,
      }[a.status];
      if (!ok) problems.push(`ack ${a.status} breaks the documented nullability: ${JSON.stringify(a)}`);
    } else if (rel[0] === 'agent') {
      check('agent status', JSON.parse(payload.toString()), spec.agentStatus, true);
    } else if (rel[0] === 'events') {
      const e = JSON.parse(payload.toString()) as { type: MesEventType };
      kinds.add(`event ${e.type}`);
      const r = eventSchemas[e.type].safeParse(e);
      if (!r.success) problems.push(`event ${e.type}: ${r.error.message}`);
    }
  }
  for (const [version, bundle] of reassemble(modelChunks)) check(`model bundle header v${version}`, bundleHeader(bundle), spec.modelBundleHeader);
  for (const [upload, bundle] of reassemble(updateChunks)) check(`update bundle header ${upload}`, bundleHeader(bundle), spec.updateBundleHeader);
  assert.deepEqual(problems, [], 'every message as documented');
  const expected = [
    'round announcement open train',
    'round announcement closed train',
    'round announcement open evaluate',
    'round announcement complete evaluate',
    'model chunk',
    'model manifest',
    'model bundle header v0',
    'model bundle header v1',
    'update chunk',
    'update-done',
    'eval',
    'ack accepted',
    'ack rejected',
    'ack incomplete',
    'ack progress',
    'agent status',
    // A rejected candidate and a rollback need a failing gate and an operator: test/model-release.test.ts
    // produces those two and checks them against the same strict schemas.
    ...Object.keys(eventSchemas)
      .filter((t) => t !== 'model-rejected' && t !== 'model-rolled-back')
      .map((t) => `event ${t}`),
  ];
  for (const k of expected) assert.ok(kinds.has(k), `a "${k}" was seen (seen: ${[...kinds].sort().join(', ')})`);
  assert.ok(
    [...kinds].some((k) => k.startsWith('update bundle header')),
    'an update bundle was reassembled',
  );
}

test('msgpack: times above 2^32 are ints (uint64/int64), documented float fields are float64 also when whole, other ints stay ints', () => {
  const now = 1_795_874_000_123;
  const bytes = packMsg({
    deadlineAt: now,
    before: -now,
    small: 3,
    task: { learningRate: 1 },
    metrics: { samples: 4, loss: 0, accuracy: 1, balancedAccuracy: 0.5, confusion: [[1, 0]], precision: [1, null], recall: [0, 1] },
    skipped: undefined,
  });
  const d = strictUnpack(bytes, { tagFloats: true }) as Record<string, unknown> & { metrics: Record<string, unknown>; task: { learningRate: unknown } };
  assert.equal(d.deadlineAt, now);
  assert.equal(d.before, -now);
  assert.equal(bytes.indexOf(Buffer.from([0xcf])) >= 0 && bytes.indexOf(Buffer.from([0xd3])) >= 0, true, 'uint64 and int64 forms');
  assert.deepEqual(d.task.learningRate, new WireFloat(1, 64));
  assert.deepEqual(d.metrics.accuracy, new WireFloat(1, 64));
  assert.deepEqual(d.metrics.loss, new WireFloat(0, 64));
  assert.deepEqual(d.metrics.precision, [new WireFloat(1, 64), null]);
  assert.equal(d.metrics.samples, 4);
  assert.deepEqual(d.metrics.confusion, [[1, 0]]);
  assert.ok(!('skipped' in d), 'an undefined field is left out, not written as an extension type');
});

test('FLOAT_FIELDS names exactly the fields docs/protocol.md types as float in msgpack messages', () => {
  const floats = new Set<string>();
  const walk = (t: spec.WireType, key: string | null) => {
    if (t.t === 'float' && key) floats.add(key);
    if (t.t === 'nil' || t.t === 'opt' || t.t === 'arr' || t.t === 'rec') walk(t.of, key);
    if (t.t === 'oneOf') t.of.forEach((o) => walk(o, key));
    if (t.t === 'map') for (const [k, f] of Object.entries(t.fields)) walk(f, k);
  };
  for (const t of [
    spec.roundAnnouncement,
    spec.modelChunk,
    spec.updateChunk,
    spec.updateDone,
    spec.evalReport,
    spec.bnStats,
    spec.ack,
    spec.modelBundleHeader,
    spec.updateBundleHeader,
  ])
    walk(t, null);
  assert.deepEqual([...floats].sort(), [...FLOAT_FIELDS].sort());
  const doc = readFileSync(`${REPO_ROOT}docs/protocol.md`, 'utf8');
  for (const f of FLOAT_FIELDS) assert.match(doc, new RegExp(`\`${f}\`[^.;]{0,120}float`), `docs/protocol.md types ${f} as float`);
});

test('msgpack writer: every length form of str, bin, array and map round-trips through an independent decoder', () => {
  const many = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
  const value = {
    short: 'ascii',
    accents: 'é'.repeat(40),
    str8: 'x'.repeat(200),
    str16: 'y'.repeat(70_000),
    bin8: Buffer.alloc(10, 1),
    bin16: Buffer.alloc(300, 2),
    bin32: Buffer.alloc(100_000, 3),
    arr16: Array.from({ length: 20 }, (_, i) => i - 10),
    map16: many(20),
    ints: [-(2 ** 31), -(2 ** 15), -200, -33, -32, 0, 127, 128, 255, 256, 65_536, 2 ** 32, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER],
    floats: [0.5, -1.25, Number.MAX_VALUE, 2 ** 60],
  };
  for (let i = 0; i < 3; i++) {
    // twice in a row: the writer's scratch buffer must not leak into the next message
    const decoded = strictUnpack(packMsg(value)) as Record<string, unknown>;
    assert.deepEqual(
      {
        ...decoded,
        bin8: Buffer.from(decoded.bin8 as Uint8Array),
        bin16: Buffer.from(decoded.bin16 as Uint8Array),
        bin32: Buffer.from(decoded.bin32 as Uint8Array),
      },
      value,
    );
  }
});
