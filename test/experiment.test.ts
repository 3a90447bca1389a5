import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FsModelStore } from '../aggregator/model-store.js';
import { generateDataset, generateExperimentData } from '../synthetic-data/generate.js';
import { experimentConfigSchema } from '../experiment/config.js';
import { runExperiment, type ExperimentResults } from '../experiment/runner.js';
import { parseConfig } from '../shared/config/config-file.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { tempDir, treeHashes } from './helpers.js';

test('the experiment generator: one seed, identical files in every part; another seed, other images', async () => {
  const dirs = [tempDir('expdata-a'), tempDir('expdata-b'), tempDir('expdata-c')];
  try {
    const opts = { seed: 11, size: 16, scale: 0.15 };
    const a = await generateExperimentData({ ...opts, out: dirs[0]!.path });
    await generateExperimentData({ ...opts, out: dirs[1]!.path });
    await generateExperimentData({ ...opts, seed: 12, out: dirs[2]!.path });
    const [ha, hb, hc] = dirs.map((d) => treeHashes(d.path));
    assert.equal(ha!.size, a.files, 'the file count reported is the count written');
    assert.ok(
      a.clients.length === 3 && a.external !== null && a.probes.length === 6 && a.reference !== null,
      'clients, external set, six cross-client probes, reference images',
    );
    for (const part of ['client1/', 'external/', 'probes/', 'reference/'])
      assert.ok(
        [...ha!.keys()].some((k) => k.startsWith(part)),
        `${part} written`,
      );
    assert.deepEqual([...ha!.entries()].sort(), [...hb!.entries()].sort(), 'same seed, byte-identical files');
    const differing = [...ha!].filter(([k, v]) => hc!.get(k) !== v).length;
    assert.ok(differing > ha!.size / 2, `another seed changes most images (${differing} of ${ha!.size})`);
  } finally {
    for (const d of dirs) d.cleanup();
  }
});

test("clientClutter classic: the clients' images are the demo's, byte for byte; the default (workshop) changes only EMPTY", async () => {
  const dirs = [tempDir('expdata-classic'), tempDir('expdata-workshop'), tempDir('demo-data')];
  try {
    const opts = { seed: 11, size: 16, scale: 0.15, parts: ['clients' as const] };
    await generateExperimentData({ ...opts, clientClutter: 'classic', out: dirs[0]!.path });
    await generateExperimentData({ ...opts, out: dirs[1]!.path });
    // As demo/prepare-data.ts generates the agents' images.
    await generateDataset({ out: dirs[2]!.path, seed: 11, size: 16, scale: 0.15 });
    const [classic, workshop, demo] = dirs.map((d) => treeHashes(d.path));
    assert.deepEqual([...classic!.entries()].sort(), [...demo!.entries()].sort(), "classic: the demo's images");
    const differing = [...workshop!].filter(([k, v]) => classic!.get(k) !== v).map(([k]) => k);
    assert.ok(differing.length > 0, 'workshop clutter changes images');
    assert.ok(
      differing.every((k) => k.includes('/EMPTY/')),
      `only EMPTY images differ (${differing.find((k) => !k.includes('/EMPTY/'))})`,
    );
  } finally {
    for (const d of dirs) d.cleanup();
  }
});

const tinyConfig = (out: string, over: Record<string, unknown>) =>
  parseConfig(
    experimentConfigSchema,
    {
      name: 'tiny',
      out,
      seed: 5,
      data: { source: 'synthetic', size: 16, scale: 0.25 },
      model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 5 },
      pretrained: null,
      training: { epochs: 1, batchSize: 16, learningRate: 0.002, learningRateDecay: 0.9, optimizer: 'adam', decoder: 'js' },
      rounds: 2,
      targetAccuracy: 0.9,
      ...over,
    },
    'test config',
  );

test('the generated classes are learnable: centralized training on all clients beats 90% on their test splits; report, results and confusion PNGs written', async () => {
  const dir = tempDir('exp-learn');
  try {
    const config = parseConfig(
      experimentConfigSchema,
      {
        name: 'learnability',
        out: dir.path,
        seed: 42,
        data: { source: 'synthetic', size: 24, scale: 1 },
        model: { architecture: 'small-cnn', inputShape: [24, 24, 3], seed: 42 },
        pretrained: null,
        training: { epochs: 4, batchSize: 16, learningRate: 0.003, optimizer: 'adam', decoder: 'js' },
        rounds: 3,
        arms: { centralized: {}, 'local-only': false, 'federated-all': false, 'federated-head': false, 'federated-random': false },
      },
      'test config',
    );
    const r = await runExperiment(config, () => {});
    const central = r.models.find((m) => m.id === 'centralized')!;
    const acc = central.eval['local-test']!.accuracy;
    assert.ok(acc > 0.9, `centralized accuracy on the pooled local test splits ${acc.toFixed(3)} > 0.9`);
    assert.equal(
      central.eval['local-test']!.samples,
      Object.values(r.data.sites).reduce((s, x) => s + x.test.reduce((a, b) => a + b, 0), 0),
    );
    const report = readFileSync(join(dir.path, 'report.md'), 'utf8');
    assert.match(report, /\| centralized \|/);
    for (const png of ['learning-curves.png', 'per-site-accuracy.png']) {
      assert.ok(report.includes(`](${png})`), `report.md shows ${png}`);
      assert.deepEqual([...readFileSync(join(dir.path, png)).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], `${png} is a PNG`);
    }
    const json = JSON.parse(readFileSync(join(dir.path, 'results.json'), 'utf8')) as ExperimentResults;
    assert.equal(json.models[0]!.eval['local-test']!.accuracy, acc);
    for (const png of Object.values(central.confusionPngs))
      assert.deepEqual([...readFileSync(join(dir.path, png)).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], `${png} is a PNG`);
    assert.ok(
      central.confusionPngs['local-test'] && central.confusionPngs.external && central.confusionPngs.probes,
      'confusion matrices for the local tests, the external set and the probes',
    );
  } finally {
    dir.cleanup();
  }
});

const loadFinal = async (modelDir: string) =>
  bundleTensors(decodeBundle(await new FsModelStore(dirname(modelDir)).readBundle(Number(basename(modelDir).slice(1)))));
const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Runs one config in both modes and checks that every arm's final global weights are bit-identical. */
async function bothModesAgree(dir: string, over: Record<string, unknown>, armIds: readonly string[], rounds: number): Promise<ExperimentResults> {
  const runs: ExperimentResults[] = [];
  for (const mode of ['in-process', 'mqtt'] as const) runs.push(await runExperiment(tinyConfig(join(dir, mode), { ...over, mode }), () => {}));
  const [inProcess, mqtt] = runs as [ExperimentResults, ExperimentResults];
  for (const id of armIds) {
    const a = inProcess.models.find((m) => m.id === id)!;
    const b = mqtt.models.find((m) => m.id === id)!;
    assert.equal(a.roundsRun, rounds);
    assert.equal(b.roundsRun, rounds);
    const ta = await loadFinal(a.modelDir);
    const tb = await loadFinal(b.modelDir);
    assert.deepEqual(
      tb.map((t) => t.name),
      ta.map((t) => t.name),
    );
    for (let i = 0; i < ta.length; i++) assert.ok(bytesOf(ta[i]!.data).equals(bytesOf(tb[i]!.data)), `${id}: ${ta[i]!.name} identical`);
    assert.deepEqual(b.eval['local-test']!.confusion, a.eval['local-test']!.confusion, `${id}: same confusion matrix`);
    assert.ok(b.bytes.upPerRound > 0);
  }
  return inProcess;
}

test('in-process and over MQTT (broker, aggregator and agent processes) give the same global weights for one seed and config', async () => {
  const dir = tempDir('exp-modes');
  try {
    const arms = { centralized: false, 'local-only': false, 'federated-all': {}, 'federated-head': {}, 'federated-random': false };
    const inProcess = await bothModesAgree(dir.path, { arms }, ['federated-all', 'federated-head'], 2);
    // Not two copies of an untouched init: head only leaves the convolutions as they were, all moves them.
    const conv = async (id: string) =>
      (await loadFinal(inProcess.models.find((x) => x.id === id)!.modelDir)).find((x) => x.name === 'block1_conv1/kernel')!.data;
    assert.notDeepEqual(await conv('federated-all'), await conv('federated-head'));
  } finally {
    dir.cleanup();
  }
});

test('batch normalisation over MQTT: the moving statistics are averaged like every weight, and both modes agree bit for bit', async () => {
  const dir = tempDir('exp-modes-bn');
  try {
    const arms = { centralized: false, 'local-only': false, 'federated-all': {}, 'federated-head': false, 'federated-random': false };
    const model = { architecture: 'vgg11', width: 0.125, batchNorm: true, inputShape: [32, 32, 3], seed: 5 };
    const r = await bothModesAgree(dir.path, { arms, model, rounds: 1, data: { source: 'synthetic', size: 32, scale: 0.15 } }, ['federated-all'], 1);
    const variance = (await loadFinal(r.models[0]!.modelDir)).find((t) => t.name === 'block1_conv1_bn/moving_variance')!;
    assert.ok(
      variance.data.some((v) => Math.abs(v - 1) > 1e-3),
      'the moving variance moved away from its init and travelled',
    );
  } finally {
    dir.cleanup();
  }
});
