import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadDataset } from '../training/image-folder.js';
import { jsDecoder } from '../training/images.js';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import type { GlobalModel } from '../training/trainer.js';
import { modelMetaSchema, type ModelMeta, type TrainTask } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { FedlineError } from '../shared/protocol/errors.js';
import { experimentConfigSchema } from '../experiment/config.js';
import { pretrainBase, PRETRAIN_INFO_FILE } from '../training/pretrain.js';
import { readWeightsFromDir } from '../training/pretrained.js';
import { readFile } from 'node:fs/promises';
import { tempDir, tinyDataset, tinyPretrainModel } from './helpers.js';

// The per-epoch learning-rate schedule of one training call (pretraining's learningRateDecay).
const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];

async function smallModel(): Promise<GlobalModel> {
  const { tf } = await loadTf('auto');
  const spec = {
    architecture: 'small-cnn' as const,
    inputShape: [16, 16, 3] as [number, number, 3],
    classes: CLASSES,
    seed: 3,
    normalization: 'per-image' as const,
    initFrom: undefined,
  };
  const d = decodeBundle<ModelMeta>(await buildInitialBundle(tf, spec), modelMetaSchema);
  return { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
}

/** One site of `perClass` generated 16 px images per class under `dir`, loaded with a quarter held out. */
async function siteData(dir: string, perClass: number) {
  await tinyDataset(dir, ['site'], perClass, 16);
  return loadDataset({ dir: join(dir, 'site'), classes: CLASSES, inputShape: [16, 16, 3], testFraction: 0.25, splitSeed: 1, decoder: jsDecoder });
}

const maxAbsDiff = (a: Float32Array, b: Float32Array): number => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

for (const optimizer of ['adam', 'sgd'] as const) {
  test(`${optimizer}: the schedule sets each epoch's rate (a second epoch at a vanishing rate leaves the first epoch's weights)`, async () => {
    const runtime = await loadTf('auto');
    const dir = tempDir('lr-schedule');
    try {
      const data = await siteData(dir.path, 6);
      const model = await smallModel();
      const names = model.tensors.map((t) => t.name);
      const task: TrainTask = { epochs: 1, batchSize: 8, learningRate: 0.01, optimizer, classWeighting: 'auto', sampling: 'shuffle', federated: 'all' };
      const trainer = new TfjsTrainer(runtime, data, { shuffleSeed: 5 });
      const one = await trainer.train(model, task, names);
      // The same first epoch (same order), then one at 1e-12 of the rate: nothing more moves.
      const scheduled = await trainer.train(model, { ...task, epochs: 2 }, names, { learningRateAt: (e) => (e === 0 ? 0.01 : 1e-14) });
      // Unscheduled, the second epoch trains at 0.01: the weights move on (what the check above tells apart).
      const two = await trainer.train(model, { ...task, epochs: 2 }, names);
      let moved = 0;
      one.tensors.forEach((t, i) => {
        assert.ok(maxAbsDiff(t.data, scheduled.tensors[i]!.data) < 1e-6, `${t.name} moved in the second epoch at a vanishing rate`);
        moved = Math.max(moved, maxAbsDiff(t.data, two.tensors[i]!.data));
      });
      assert.ok(moved > 1e-4, `an unscheduled second epoch moves the weights (largest change ${moved})`);
      // The first epoch at a different scheduled rate is not the first epoch at task.learningRate.
      const slower = await trainer.train(model, task, names, { learningRateAt: () => 0.001 });
      assert.ok(Math.max(...one.tensors.map((t, i) => maxAbsDiff(t.data, slower.tensors[i]!.data))) > 1e-5, 'epoch 0 uses the schedule too');
    } finally {
      dir.cleanup();
    }
  });
}

test('a schedule with SCAFFOLD is refused (its correction is scaled by the task rate); a non-positive rate is refused', async () => {
  const runtime = await loadTf('auto');
  const dir = tempDir('lr-schedule-bad');
  try {
    const data = await siteData(dir.path, 4);
    const model = await smallModel();
    const names = model.tensors.map((t) => t.name);
    const task: TrainTask = { epochs: 1, batchSize: 8, learningRate: 0.01, optimizer: 'adam', classWeighting: 'auto', sampling: 'shuffle', federated: 'all' };
    const trainer = new TfjsTrainer(runtime, data, { shuffleSeed: 5 });
    const tensorsBefore = runtime.tf.memory().numTensors;
    await assert.rejects(trainer.train(model, { ...task, scaffold: true }, names, { learningRateAt: () => 0.01 }), /SCAFFOLD/);
    await assert.rejects(
      trainer.train(model, task, names, { learningRateAt: () => 0 }),
      (e: unknown) => e instanceof FedlineError && /learning rate/.test(e.message),
    );
    assert.equal(runtime.tf.memory().numTensors, tensorsBefore, 'nothing left behind by a refused call');
  } finally {
    dir.cleanup();
  }
});

test('experiment pretrained.learningRateDecay: default 1 (constant), must be in (0, 1]', () => {
  const base = { data: { source: 'synthetic' }, model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 1 }, training: {}, rounds: 1 };
  assert.equal(experimentConfigSchema.parse(base).pretrained?.learningRateDecay, 1);
  assert.equal(experimentConfigSchema.parse({ ...base, pretrained: { learningRateDecay: 0.8 } }).pretrained?.learningRateDecay, 0.8);
  assert.equal(experimentConfigSchema.safeParse({ ...base, pretrained: { learningRateDecay: 0 } }).success, false);
  assert.equal(experimentConfigSchema.safeParse({ ...base, pretrained: { learningRateDecay: 1.5 } }).success, false);
});

test('pretrainBase: learningRateDecay reaches the training (other weights than constant) and is recorded in pretrain.json', async () => {
  const dir = tempDir('lr-schedule-pretrain');
  try {
    await tinyDataset(dir.path, ['ref'], 6, 16);
    const model = tinyPretrainModel();
    const run = (out: string, learningRateDecay?: number) =>
      pretrainBase({
        dataDir: join(dir.path, 'ref'),
        model,
        epochs: 2,
        batchSize: 8,
        learningRate: 0.01,
        ...(learningRateDecay ? { learningRateDecay } : {}),
        out: join(dir.path, out),
      });
    await run('constant');
    await run('decayed', 0.1);
    const info = (out: string) => readFile(join(dir.path, out, PRETRAIN_INFO_FILE), 'utf8').then((t) => JSON.parse(t) as { learningRateDecay: number });
    assert.equal((await info('constant')).learningRateDecay, 1);
    assert.equal((await info('decayed')).learningRateDecay, 0.1);
    const [a, b] = await Promise.all([readWeightsFromDir(join(dir.path, 'constant')), readWeightsFromDir(join(dir.path, 'decayed'))]);
    const diff = Math.max(...[...a].map(([name, w]) => maxAbsDiff(w.data, b.get(name)!.data)));
    assert.ok(diff > 1e-4, `the second epoch at a tenth of the rate gives other weights (largest difference ${diff})`);
  } finally {
    dir.cleanup();
  }
});
