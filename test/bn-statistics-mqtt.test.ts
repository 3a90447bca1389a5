import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadTf } from '../training/backend.js';
import { loadDataset } from '../training/image-folder.js';
import { jsDecoder } from '../training/images.js';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import { momentsOfValues, poolMoments } from '../shared/fl/bn-statistics.js';
import { RoundState } from '../aggregator/round-state.js';
import { UpdateSpool } from '../aggregator/update-spool.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { modelMetaSchema, type ModelMeta } from '../shared/protocol/messages.js';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import { startAedes, startFederation, tempDir } from './helpers.js';

/**
 * aggregator batchNorm pooled-statistics over real MQTT (embedded Aedes, aggregator, 2 agents,
 * small-cnn with BN): every aggregated training round is followed by a statistics round, and the
 * version it publishes is the averaged one with the moving statistics of both sites' training
 * images pooled.
 */
test('pooled-statistics over MQTT: a statistics round after each training round publishes the pooled BN statistics', { timeout: 300_000 }, async (t) => {
  const dir = tempDir('bn-mqtt');
  const broker = await startAedes();
  const agents = ['site-a', 'site-b'];
  const fed = await startFederation({
    url: broker.url,
    dir: dir.path,
    agents,
    rounds: 2,
    dataPerClass: 4,
    aggregator: {
      batchNorm: 'pooled-statistics',
      model: { architecture: 'small-cnn', width: 1, batchNorm: true, inputShape: [16, 16, 3], classes: [...INSPECTION_CLASSES], seed: 3 },
    },
  });
  t.after(async () => {
    await fed.stop();
    await broker.close();
    dir.cleanup();
  });
  // Execute
  const result = await fed.aggregator.aggregator.run();
  // Assert: the rounds, in order.
  assert.deepEqual(
    result.rounds.map((r) => [r.kind, r.outcome, r.baseVersion, r.newVersion]),
    [
      ['train', 'aggregate', 0, 1],
      ['statistics', 'aggregate', 1, 2],
      ['train', 'aggregate', 2, 3],
      ['statistics', 'aggregate', 3, 4],
      ['evaluate', 'evaluated', 4, null],
    ],
  );
  assert.deepEqual(result.rounds[3]!.participants, agents);
  assert.equal(result.finalVersion, 4);
  // The published version 4: version 3's weights, with the statistics both sites compute for version 3, pooled.
  const store = fed.aggregator.store;
  const read = async (v: number) => {
    const d = decodeBundle<ModelMeta>(await store.readBundle(v), modelMetaSchema);
    return { version: v, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
  };
  const [averaged, pooled] = [await read(3), await read(4)];
  const runtime = await loadTf('cpu');
  const perSite = [];
  for (const a of agents) {
    const data = await loadDataset({
      dir: join(dir.path, 'data', a),
      classes: [...INSPECTION_CLASSES],
      inputShape: [16, 16, 3],
      testFraction: 0.25,
      splitSeed: 1,
      decoder: jsDecoder,
    });
    perSite.push(await new TfjsTrainer(runtime, data, 1).batchNormStatistics(averaged));
  }
  const expected = poolMoments(perSite);
  assert.equal(expected.size, 3);
  let changed = 0;
  averaged.tensors.forEach((t, i) => {
    const got = pooled.tensors[i]!;
    assert.equal(got.name, t.name);
    const m = /^(.*)\/moving_(mean|variance)$/.exec(t.name);
    if (!m) return assert.deepEqual(got.data, t.data, `${t.name} is version 3's`);
    const want = m[2] === 'mean' ? expected.get(m[1]!)!.mean : expected.get(m[1]!)!.variance;
    got.data.forEach((v, c) => assert.ok(Math.abs(v - want[c]!) <= 1e-5 * Math.max(1, Math.abs(want[c]!)), `${t.name}[${c}] ${v} vs ${want[c]}`));
    if (got.data.some((v, c) => Math.abs(v - t.data[c]!) > 1e-4 * Math.max(1, Math.abs(v)))) changed++;
  });
  assert.ok(changed > 0, 'the pooled statistics are not the averaged ones');
  // The agents evaluated the published version with its pooled statistics.
  assert.deepEqual(Object.keys(result.rounds[4]!.baseMetrics), agents);
});

test('statistics round: closes when every selected agent reported, pools at the deadline with minClients, keeps below it', () => {
  const plan = {
    round: 2,
    kind: 'statistics' as const,
    baseVersion: 1,
    selected: ['b', 'a'],
    minClients: 2,
    deadlineAt: 1000,
    startedAt: 0,
    targetAccuracy: null,
  };
  const moments = [momentsOfValues('bn', [1, 2, 3, 4], 2)];
  const all = new RoundState(plan);
  assert.equal(all.recordStatistics('a', moments), true);
  assert.equal(all.recordStatistics('a', moments), false, 'a second report is ignored');
  assert.deepEqual(all.decide(10), { close: false });
  all.recordStatistics('b', moments);
  const done = all.decide(10);
  assert.ok(done.close && done.outcome === 'aggregate');
  assert.deepEqual(
    all.statisticsByAgent().map(([agent]) => agent),
    ['a', 'b'],
  );
  const short = new RoundState(plan);
  short.recordStatistics('a', moments);
  const late = short.decide(1000);
  assert.ok(late.close && late.outcome === 'keep' && /1 of 2 statistics, 2 needed/.test(late.reason), JSON.stringify(late));
  const enough = new RoundState({ ...plan, minClients: 1 });
  enough.recordStatistics('b', moments);
  const d = enough.decide(1000);
  assert.ok(d.close && d.outcome === 'aggregate');
});

test('statistics round: reports kept in the spool come back exactly after a restart', async () => {
  const dir = tempDir('bn-spool');
  try {
    const spool = new UpdateSpool(join(dir.path, 'spool'));
    spool.ensureRound(3);
    const m = momentsOfValues('block1_conv1_bn', [0.1, 1e4, -2.5, 1e4 + 0.01], 2);
    await spool.saveStatistics(3, 'site-a', [m]);
    const back = await spool.listStatistics(3);
    assert.deepEqual(back, [['site-a', [m]]]);
    assert.deepEqual(await spool.list(3), [], 'statistics are not taken for spooled updates');
  } finally {
    dir.cleanup();
  }
});
