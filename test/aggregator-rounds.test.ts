import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Aggregator } from '../aggregator/aggregator.js';
import { FsModelStore } from '../aggregator/model-store.js';
import { UpdateSpool } from '../aggregator/update-spool.js';
import { sendUpdate } from '../edge-agent/uplink.js';
import { decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';
import { MemoryHub } from '../shared/transport/memory-transport.js';
import { classificationMetrics } from '../shared/fl/classification-metrics.js';
import { roundAnnouncementSchema, SUPPORTED_VERSIONS, type ModelMeta, type RoundAnnouncement, type UpdateMeta } from '../shared/protocol/messages.js';
import { encodeBundle } from '../shared/bundle/tensor-bundle.js';
import { createTopics } from '../shared/protocol/topics.js';
import { aggregatorConfig, tempDir } from './helpers.js';

/**
 * Round logic over the in-memory transport, with scripted agents instead of tfjs trainers:
 * deadlines, minClients, stragglers, late updates.
 */
const topics = createTopics('fl/test');
const classes = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const initialModel = async () => {
  const meta: ModelMeta = {
    kind: 'model',
    version: 0,
    round: 0,
    topology: { fake: true },
    headTensors: ['head/b'],
    classes,
    inputShape: [16, 16, 3],
    normalization: 'unit',
    createdAt: 1,
  };
  return encodeBundle(
    [
      { name: 'w', shape: [3], dtype: 'float32', data: Float32Array.from([0, 0, 0]) },
      { name: 'head/b', shape: [1], dtype: 'float32', data: Float32Array.from([0]) },
    ],
    meta,
  );
};

/** The uploads of the scripted agents, ended after each test: one whose aggregator stopped before its verdict would ask again forever and keep the test process alive. */
const uploads: AbortController[] = [];
afterEach(() => {
  for (const c of uploads.splice(0)) c.abort();
});

/** An agent that answers every open training round with fixed weights (or stays silent). */
function scriptedAgent(hub: MemoryHub, agent: string, value: number, samples: number, behaviour: 'deliver' | 'silent') {
  const transport = hub.connect(`agent-${agent}`);
  const seen = new Set<number>();
  const acks: string[] = [];
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
      if (behaviour === 'silent') return;
      const metrics = classificationMetrics([0, 1, 2, 3], [0, 1, 2, 3], 4);
      void transport.publish(
        topics.update(ann.round, agent),
        packMsg({ v: 1, type: 'eval', round: ann.round, agent, baseVersion: ann.base.version, metrics, downloadedBytes: 0 }),
      );
      if (ann.kind !== 'train') return;
      const meta: UpdateMeta = {
        kind: 'update',
        agent,
        round: ann.round,
        baseVersion: ann.base.version,
        sampleCount: samples,
        epochs: 1,
        metricsBefore: metrics,
        metricsAfter: metrics,
        trainMs: 1,
        backend: 'none',
      };
      const bundle = encodeBundle(
        [
          { name: 'w', shape: [3], dtype: 'float32', data: Float32Array.from([value, value, value]) },
          { name: 'head/b', shape: [1], dtype: 'float32', data: Float32Array.from([value]) },
        ],
        meta,
      );
      const upload = new AbortController();
      uploads.push(upload);
      sendUpdate(transport, topics, bundle, silentLogger(), {
        round: ann.round,
        agent,
        chunkBytes: ann.chunkBytes,
        maxInflight: 2,
        ackTimeoutMs: 2000,
        signal: upload.signal,
      }).then(
        (r) => acks.push(`${ann.round}:${r.ack.status}`),
        () => undefined, // ended by the test (afterEach)
      );
    });
  })();
  return { transport, acks, ready };
}

function setup(minClients: number, deadlineMs: number, dir = tempDir('agg-rounds'), hub = new MemoryHub()) {
  const config = aggregatorConfig({
    url: 'mqtt://127.0.0.1:1',
    dir: dir.path,
    agents: ['a', 'b', 'c'],
    minClients,
    roundDeadlineMs: deadlineMs,
    waitForAgentsMs: 200,
    chunkBytes: 1024,
  });
  const aggregator = new Aggregator(
    { ...config, evaluateFinalModel: false },
    {
      transport: hub.connect('aggregator'),
      store: new FsModelStore(join(dir.path, 'models')),
      spool: new UpdateSpool(join(dir.path, 'spool')),
      initialModel,
      logger: silentLogger(),
    },
  );
  return { dir, hub, aggregator };
}

test('a straggler does not block the round: it closes at the deadline with the others when minClients is met', { timeout: 30_000 }, async () => {
  const { dir, hub, aggregator } = setup(2, 600);
  try {
    const agents = [scriptedAgent(hub, 'a', 1, 100, 'deliver'), scriptedAgent(hub, 'b', 4, 300, 'deliver'), scriptedAgent(hub, 'c', 0, 50, 'silent')];
    await Promise.all(agents.map((a) => a.ready));
    const result = await aggregator.run();
    const r = result.rounds[0]!;
    assert.equal(r.outcome, 'aggregate');
    assert.deepEqual(r.participants, ['a', 'b']);
    assert.match(r.reason!, /deadline passed: 2 of 3 updates accepted/);
    // (100 * 1 + 300 * 4) / 400 = 3.25
    assert.equal(result.finalVersion, 1);
    const store = new FsModelStore(join(dir.path, 'models'));
    const bundle = await store.readBundle(1);
    assert.ok(bundle.byteLength > 0);
    const { bundleTensors, decodeBundle } = await import('../shared/bundle/tensor-bundle.js');
    assert.deepEqual([...bundleTensors(decodeBundle(bundle)).find((t) => t.name === 'w')!.data], [3.25, 3.25, 3.25]);
  } finally {
    dir.cleanup();
  }
});

test('too few updates at the deadline: the global model is kept and an alert says so; a late update is refused cleanly', { timeout: 30_000 }, async () => {
  const { dir, hub, aggregator } = setup(2, 500);
  try {
    const events: Record<string, unknown>[] = [];
    aggregator.on('event', (e: Record<string, unknown>) => events.push(e));
    const agents = [scriptedAgent(hub, 'a', 1, 100, 'deliver'), scriptedAgent(hub, 'b', 0, 1, 'silent'), scriptedAgent(hub, 'c', 0, 1, 'silent')];
    await Promise.all(agents.map((a) => a.ready));
    const result = await aggregator.run();
    assert.equal(result.rounds[0]!.outcome, 'keep');
    assert.equal(result.finalVersion, 0, 'the global model stays as it was');
    const alert = events.find((e) => e.type === 'alert' && e.code === 'FL_ROUND_KEPT');
    assert.ok(alert, 'an alert event names the kept round');
    assert.match(String(alert.message), /1 of 3 updates accepted, 2 needed/);

    // The straggler finally sends its update for round 1, which is closed: refused with ROUND_CLOSED.
    const late = hub.connect('late-b');
    const meta: UpdateMeta = {
      kind: 'update',
      agent: 'b',
      round: 1,
      baseVersion: 0,
      sampleCount: 5,
      epochs: 1,
      metricsBefore: null,
      metricsAfter: null,
      trainMs: 1,
      backend: 'none',
    };
    const bundle = encodeBundle(
      [
        { name: 'w', shape: [3], dtype: 'float32', data: new Float32Array(3) },
        { name: 'head/b', shape: [1], dtype: 'float32', data: new Float32Array(1) },
      ],
      meta,
    );
    const before = aggregator.counters.get(ErrorCodes.ROUND_CLOSED);
    const sent = await sendUpdate(late, topics, bundle, silentLogger(), { round: 1, agent: 'b', chunkBytes: 1024, maxInflight: 2, ackTimeoutMs: 2000 });
    assert.equal(sent.ack.status, 'rejected');
    assert.equal(sent.ack.code, ErrorCodes.ROUND_CLOSED);
    assert.ok(aggregator.counters.get(ErrorCodes.ROUND_CLOSED) > before, 'the late chunks were counted');
    assert.equal((await new FsModelStore(join(dir.path, 'models')).versions()).length, 1, 'nothing was stored from it');
    await aggregator.stop();
    await late.close();
  } finally {
    dir.cleanup();
  }
});

test(
  'eval reports are kept in the round spool, not by rewriting the journal; a restarted aggregator resumes the round with them',
  { timeout: 30_000 },
  async () => {
    const { dir, hub, aggregator } = setup(3, 60_000);
    try {
      const agents = [scriptedAgent(hub, 'a', 1, 100, 'deliver'), scriptedAgent(hub, 'b', 4, 300, 'deliver'), scriptedAgent(hub, 'c', 0, 50, 'silent')];
      await Promise.all(agents.map((a) => a.ready));
      const running = aggregator.run();
      const spooled = (agent: string) => join(dir.path, 'spool', 'r1', `${agent}.eval`);
      const started = Date.now();
      while (!(existsSync(spooled('a')) && existsSync(spooled('b')))) {
        assert.ok(Date.now() - started < 10_000, 'both evaluations reach the spool');
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual(Object.keys(aggregator.history()[0]!.baseMetrics).sort(), ['a', 'b'], 'recorded in memory at once');
      // On disk the journal still has the round as it opened: the reports did not rewrite it.
      const journal = JSON.parse(readFileSync(join(dir.path, 'aggregator', 'journal.json'), 'utf8')) as { rounds: { outcome: unknown; baseMetrics: object }[] };
      assert.equal(journal.rounds[0]!.outcome, null);
      assert.deepEqual(journal.rounds[0]!.baseMetrics, {});

      // A crash at this point leaves that journal and spool: keep them, stop, put them back.
      const saved = join(dir.path, 'crash-copy');
      cpSync(join(dir.path, 'aggregator'), join(saved, 'aggregator'), { recursive: true });
      cpSync(join(dir.path, 'spool'), join(saved, 'spool'), { recursive: true });
      await aggregator.stop();
      await running;
      for (const d of ['aggregator', 'spool']) {
        rmSync(join(dir.path, d), { recursive: true, force: true });
        cpSync(join(saved, d), join(dir.path, d), { recursive: true });
      }

      // The restarted aggregator (nobody else online) resumes round 1 with both evaluations.
      const restarted = setup(3, 60_000, dir, new MemoryHub()).aggregator;
      const resumed = restarted.run();
      const t0 = Date.now();
      while (Object.keys(restarted.history()[0]?.baseMetrics ?? {}).length < 2) {
        assert.ok(Date.now() - t0 < 10_000, 'the resumed round has the spooled evaluations');
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(restarted.history()[0]!.round, 1);
      assert.deepEqual(Object.keys(restarted.history()[0]!.baseMetrics).sort(), ['a', 'b']);
      await restarted.stop();
      await resumed;
    } finally {
      dir.cleanup();
    }
  },
);
