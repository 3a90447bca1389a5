import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Aggregator } from '../aggregator/aggregator.js';
import { FsModelStore } from '../aggregator/model-store.js';
import { UpdateSpool } from '../aggregator/update-spool.js';
import { downloadModel } from '../edge-agent/model-downlink.js';
import { sendUpdate, type UplinkResult } from '../edge-agent/uplink.js';
import { decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import { fedAvg } from '../shared/fl/fedavg.js';
import { silentLogger } from '../shared/util/logger.js';
import { MemoryHub } from '../shared/transport/memory-transport.js';
import {
  ackSchema,
  modelMetaSchema,
  roundAnnouncementSchema,
  SUPPORTED_VERSIONS,
  updateTopicMessageSchema,
  type ModelMeta,
  type RoundAnnouncement,
  type UpdateMeta,
} from '../shared/protocol/messages.js';
import { mulberry32 } from '../shared/util/random.js';
import { bundleTensors, decodeBundle, encodeBundle, type NamedTensor } from '../shared/bundle/tensor-bundle.js';
import { createTopics } from '../shared/protocol/topics.js';
import { decodeValues, type UpdateEncoding } from '../shared/bundle/value-encodings.js';
import { encodeUpdateSource, tensorValues } from '../shared/bundle/encoded-update.js';
import { aggregatorConfig, tempDir } from './helpers.js';
import { strictUnpack } from './strict-msgpack.js';

/**
 * Rounds with encoded updates (f16, q8, delta), a partly federated model and end-to-end flow
 * control, over the in-memory transport with scripted agents: the new global model must be the
 * FedAvg of exactly the values the agents' encoded updates decode to.
 */
const topics = createTopics('fl/test');
const classes = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const SHAPES: [string, number[]][] = [
  ['features/kernel', [100, 50]],
  ['features/bias', [50]],
  ['head/kernel', [50, 4]],
  ['head/b', [4]],
];

function initialModel(): Promise<Uint8Array> {
  const rng = mulberry32(11);
  const meta: ModelMeta = {
    kind: 'model',
    version: 0,
    round: 0,
    topology: { fake: true },
    headTensors: ['head/kernel', 'head/b'],
    classes,
    inputShape: [16, 16, 3],
    normalization: 'unit',
    createdAt: 1,
  };
  const tensors: NamedTensor[] = SHAPES.map(([name, shape]) => ({
    name,
    shape,
    dtype: 'float32',
    data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng() - 0.5),
  }));
  return Promise.resolve(encodeBundle(tensors, meta));
}

interface Sent {
  agent: string;
  samples: number;
  bytes: Uint8Array;
  result: UplinkResult;
}

/** An agent that downloads the base, "trains" (base + small noise) and sends its update as the round asks. */
function scriptedAgent(hub: MemoryHub, agent: string, seed: number, samples: number, sent: Sent[]) {
  const transport = hub.connect(`agent-${agent}`);
  const seen = new Set<number>();
  const ready = (async () => {
    await transport.publish(
      topics.status(agent),
      encodeJson({ v: 1, agent, state: 'idle', round: null, progress: null, detail: null, backend: null, samples: null, ts: 1 }),
      { retain: true },
    );
    await transport.subscribe(topics.round(), (m) => {
      const ann = decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round' }) as RoundAnnouncement;
      if (ann.state !== 'open' || seen.has(ann.round) || !ann.selected.includes(agent)) return;
      seen.add(ann.round);
      void (async () => {
        const base = decodeBundle<ModelMeta>(
          await downloadModel(transport, topics, ann.base, silentLogger(), { maxModelBytes: 1 << 24, stallMs: 5000 }),
          modelMetaSchema,
        );
        const metrics = {
          samples: 4,
          loss: null,
          accuracy: 1,
          balancedAccuracy: 1,
          confusion: [
            [1, 0, 0, 0],
            [0, 1, 0, 0],
            [0, 0, 1, 0],
            [0, 0, 0, 1],
          ],
          precision: [1, 1, 1, 1],
          recall: [1, 1, 1, 1],
        };
        await transport.publish(
          topics.update(ann.round, agent),
          packMsg({ v: 1, type: 'eval', round: ann.round, agent, baseVersion: ann.base.version, metrics, downloadedBytes: 0 }),
        );
        if (ann.kind !== 'train') return;
        const rng = mulberry32(seed + ann.round);
        const federated = ann.task.federated === 'head' ? base.header.meta.headTensors : bundleTensors(base).map((t) => t.name);
        const trained = bundleTensors(base)
          .filter((t) => federated.includes(t.name))
          .map((t) => ({ ...t, data: t.data.map((v) => v + (rng() - 0.5) * 0.01) }));
        const meta: UpdateMeta = {
          kind: 'update',
          agent,
          round: ann.round,
          baseVersion: ann.base.version,
          sampleCount: samples,
          epochs: 1,
          metricsBefore: null,
          metricsAfter: null,
          trainMs: 1,
          backend: 'none',
          delta: ann.delta,
        };
        const source = encodeUpdateSource(trained.map(tensorValues), meta, {
          encoding: ann.encoding,
          delta: ann.delta,
          base: new Map(bundleTensors(base).map((t) => [t.name, t.data])),
        });
        const bytes = new Uint8Array(source.byteLength);
        source.read(0, bytes);
        const result = await sendUpdate(transport, topics, source, silentLogger(), {
          round: ann.round,
          agent,
          chunkBytes: ann.chunkBytes,
          windowChunks: ann.windowChunks,
          maxInflight: 4,
          ackTimeoutMs: 10_000,
        });
        sent.push({ agent, samples, bytes, result });
      })();
    });
  })();
  return { transport, ready };
}

function setup(options: { encoding: UpdateEncoding; delta: boolean; federated?: 'all' | 'head'; windowChunks?: number; agents?: string[] }) {
  const dir = tempDir('encoded-rounds');
  const hub = new MemoryHub();
  const agents = options.agents ?? ['a', 'b', 'c'];
  const base = aggregatorConfig({ url: 'mqtt://127.0.0.1:1', dir: dir.path, agents, waitForAgentsMs: 200, chunkBytes: 1024 });
  const config = {
    ...base,
    encoding: options.encoding,
    delta: options.delta,
    windowChunks: options.windowChunks ?? base.windowChunks,
    task: { ...base.task, federated: options.federated ?? 'all' },
    evaluateFinalModel: false,
  };
  const aggregator = new Aggregator(config, {
    transport: hub.connect('aggregator'),
    store: new FsModelStore(join(dir.path, 'models')),
    spool: new UpdateSpool(join(dir.path, 'spool')),
    initialModel,
    logger: silentLogger(),
  });
  return { dir, hub, aggregator, agents, store: new FsModelStore(join(dir.path, 'models')) };
}

/** What the aggregator must compute: FedAvg of the values the updates decode to (differences added to the base). */
function expectedModel(sent: Sent[], base: NamedTensor[]): Map<string, Float32Array> {
  const baseMap = new Map(base.map((t) => [t.name, t.data]));
  const inputs = sent.map((s) => {
    const d = decodeBundle<UpdateMeta>(s.bytes);
    const tensors = new Map<string, Float32Array>();
    for (const spec of d.header.tensors) {
      const values = new Float32Array(spec.shape.reduce((a, b) => a * b, 1));
      decodeValues(spec.dtype, s.bytes.subarray(d.payloadStart + spec.offset), values.length, values, spec.block);
      if (d.header.meta.delta) for (let i = 0; i < values.length; i++) values[i] = values[i]! + baseMap.get(spec.name)![i]!;
      tensors.set(spec.name, values);
    }
    return { id: s.agent, weight: s.samples, tensors };
  });
  return fedAvg(inputs, [...inputs[0]!.tensors.keys()]);
}

for (const [encoding, delta] of [
  ['f16', false],
  ['q8', false],
  ['q8', true],
  ['f32', true],
] as const) {
  test(
    `${encoding}${delta ? ' + delta' : ''}: the round averages exactly what the encoded updates decode to, and they are that much smaller`,
    { timeout: 60_000 },
    async () => {
      const { dir, hub, aggregator, agents, store } = setup({ encoding, delta });
      try {
        const sent: Sent[] = [];
        const peers = agents.map((a, i) => scriptedAgent(hub, a, 100 * i, 10 + 20 * i, sent));
        await Promise.all(peers.map((p) => p.ready));
        const result = await aggregator.run();
        assert.equal(result.rounds[0]!.outcome, 'aggregate');
        assert.equal(result.finalVersion, 1);
        assert.ok(sent.every((s) => s.result.ack.status === 'accepted' && s.result.ack.sha256 === s.result.sha256));
        const base = bundleTensors(decodeBundle(await store.readBundle(0)));
        const expected = expectedModel(sent, base);
        const got = bundleTensors(decodeBundle(await store.readBundle(1)));
        for (const t of got)
          assert.deepEqual(
            Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength),
            Buffer.from(expected.get(t.name)!.buffer),
            `${t.name} bit-identical`,
          );
        // Far from base + noise? No: within the codec error of the true average.
        const f32Bytes = base.reduce((s, t) => s + t.data.length * 4, 0);
        const payload = sent[0]!.bytes.byteLength - decodeBundle(sent[0]!.bytes).payloadStart;
        const ratio = f32Bytes / payload;
        if (encoding === 'f16') assert.ok(ratio > 1.99 && ratio <= 2, `f16 payload ratio ${ratio}`);
        if (encoding === 'q8') assert.ok(ratio > 3.9, `q8 payload ratio ${ratio}`);
        assert.equal(result.rounds[0]!.encoding, encoding);
        assert.equal(result.rounds[0]!.delta, delta);
      } finally {
        await aggregator.stop();
        dir.cleanup();
      }
    },
  );
}

test('federating the head only: frozen tensors stay bit for bit as in the base, the head is averaged', { timeout: 60_000 }, async () => {
  const { dir, hub, aggregator, agents, store } = setup({ encoding: 'f16', delta: true, federated: 'head' });
  try {
    const sent: Sent[] = [];
    const peers = agents.map((a, i) => scriptedAgent(hub, a, 7 * i, 5 + i, sent));
    await Promise.all(peers.map((p) => p.ready));
    await aggregator.run();
    const base = bundleTensors(decodeBundle(await store.readBundle(0)));
    const got = bundleTensors(decodeBundle(await store.readBundle(1)));
    const expected = expectedModel(sent, base);
    assert.deepEqual([...expected.keys()], ['head/kernel', 'head/b'], 'only the head travelled');
    for (const t of got) {
      const want = expected.get(t.name) ?? base.find((b) => b.name === t.name)!.data;
      assert.deepEqual(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength), Buffer.from(want.buffer, want.byteOffset, want.byteLength), t.name);
    }
  } finally {
    await aggregator.stop();
    dir.cleanup();
  }
});

test('flow control: an agent never has more than its window of chunks beyond what the aggregator reported stored', { timeout: 60_000 }, async () => {
  const window = 8;
  const { dir, hub, aggregator, agents } = setup({ encoding: 'f32', delta: false, windowChunks: window, agents: ['a', 'b'] });
  try {
    const sent: Sent[] = [];
    const peers = agents.map((a, i) => scriptedAgent(hub, a, i, 10, sent));
    await Promise.all(peers.map((p) => p.ready));
    const result = await aggregator.run();
    assert.equal(result.rounds[0]!.outcome, 'aggregate');
    assert.ok(sent.every((s) => s.result.ack.status === 'accepted'));
    assert.ok(
      sent.some((s) => s.result.creditWaits > 0),
      'the window was reached and the senders waited for progress acks',
    );
    // Replay the broker's log: chunks published vs progress reported, per agent, in order.
    for (const agent of agents) {
      let published = 0;
      let stored = 0;
      let allowed = 0;
      let progressAcks = 0;
      for (const m of hub.log) {
        if (m.topic === topics.update(1, agent)) {
          const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'update' });
          if (msg.type !== 'update-chunk') continue;
          // Chunk messages are built by hand around their bytes: still plain standard msgpack.
          assert.equal((strictUnpack(m.payload) as { seq: number }).seq, msg.seq);
          published++;
          allowed = Math.max(allowed, published - stored);
        } else if (m.topic === topics.ack(1, agent)) {
          const ack = decodeMsgpack(m.payload, ackSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'ack' });
          if (ack.status === 'progress') {
            progressAcks++;
            stored = ack.stored;
            assert.ok(ack.window >= window / agents.length && ack.window <= window, `window ${ack.window}`);
          }
        }
      }
      assert.ok(progressAcks > 0, `${agent} got progress acks`);
      assert.ok(allowed <= window, `${agent} had up to ${allowed} chunks in flight, window ${window}`);
      assert.ok(published > window * 2, `${agent} sent ${published} chunks`);
    }
  } finally {
    await aggregator.stop();
    dir.cleanup();
  }
});

test('flow control: when uploads end, the agents still sending get the larger window at once (no credit timeout)', { timeout: 120_000 }, async () => {
  // 6 agents share 48 chunks: 8 each while all send. As uploads end the share grows (up to 48)
  // and progress is reported every quarter window; an agent holding only its old share in flight
  // would never reach the new report interval and would wait for credit until its timeout (10 s).
  const agentIds = ['a', 'b', 'c', 'd', 'e', 'f'];
  const { dir, hub, aggregator } = setup({ encoding: 'f32', delta: false, windowChunks: 48, agents: agentIds });
  try {
    const sent: Sent[] = [];
    const peers = agentIds.map((a, i) => scriptedAgent(hub, a, i, 10, sent));
    await Promise.all(peers.map((p) => p.ready));
    const result = await aggregator.run();
    assert.equal(result.rounds[0]!.outcome, 'aggregate');
    assert.equal(sent.length, agentIds.length);
    assert.ok(
      sent.some((s) => s.result.creditWaits > 0),
      'the shared window was reached',
    );
    assert.deepEqual(
      sent.map((s) => [s.agent, s.result.creditTimeouts]),
      sent.map((s) => [s.agent, 0]),
      'no agent waited out a credit timeout',
    );
  } finally {
    await aggregator.stop();
    dir.cleanup();
  }
});
