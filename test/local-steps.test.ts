import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FedAvg } from '../aggregator/fedavg-strategy.js';
import { aggregatorConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { loadDataset } from '../training/image-folder.js';
import { jsDecoder } from '../training/images.js';
import { localWork, TfjsTrainer } from '../training/tfjs-trainer.js';
import type { GlobalModel, TrainProgress } from '../training/trainer.js';
import { modelMetaSchema, roundAnnouncementSchema, type ModelMeta, type TrainTask } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { tempDir, tinyDataset } from './helpers.js';

/**
 * Local work per round in optimizer steps (the task's localSteps): a site with ten times the
 * images does as many steps as a small one; unset, training is the epochs it always was; the
 * round announcement carries the steps, the round's learning rate, the sampling and the optimizer state.
 */

const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const TASK: TrainTask = { epochs: 1, batchSize: 4, learningRate: 0.003, optimizer: 'adam', classWeighting: 'auto', sampling: 'shuffle', federated: 'all' };

async function initialModel(): Promise<GlobalModel> {
  const { tf } = await loadTf('auto');
  const spec = {
    architecture: 'small-cnn' as const,
    width: 1,
    inputShape: [16, 16, 3] as [number, number, 3],
    classes: CLASSES,
    seed: 3,
    normalization: 'per-image' as const,
  };
  const d = decodeBundle<ModelMeta>(await buildInitialBundle(tf, { ...spec, initFrom: undefined }), modelMetaSchema);
  return { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
}

/** Train once, recording every progress report. */
async function trainCounting(trainer: TfjsTrainer, model: GlobalModel, task: TrainTask) {
  const seen: TrainProgress[] = [];
  const r = await trainer.train(
    model,
    task,
    model.tensors.map((t) => t.name),
    { onProgress: (p) => seen.push(p) },
  );
  return { r, seen };
}

test('localWork: epochs unchanged when unset; localSteps spans as many epochs as it needs', () => {
  assert.deepEqual(localWork(20, { epochs: 3, batchSize: 8 }), { batchesPerEpoch: 3, epochs: 3, steps: 9 });
  assert.deepEqual(localWork(20, { epochs: 3, batchSize: 8, localSteps: 7 }), { batchesPerEpoch: 3, epochs: 3, steps: 7 });
  assert.deepEqual(localWork(200, { epochs: 3, batchSize: 8, localSteps: 7 }), { batchesPerEpoch: 25, epochs: 1, steps: 7 });
});

test('localSteps: a site with ten times the images does the same optimizer steps; unset, the epochs; localSteps = epochs x batches trains bit-identically', async () => {
  const runtime = await loadTf('auto');
  const dir = tempDir('local-steps');
  try {
    // Prepare: a small site (4 images per class) and a big one (40 per class), same classes.
    await tinyDataset(join(dir.path, 'small'), ['site'], 4, 16);
    await tinyDataset(join(dir.path, 'big'), ['site'], 40, 16);
    const load = (which: string) =>
      loadDataset({
        dir: join(dir.path, which, 'site'),
        classes: CLASSES,
        inputShape: [16, 16, 3],
        testFraction: 0.25,
        splitSeed: 1,
        cacheBytes: 1 << 26,
        decoder: jsDecoder,
      });
    const small = await load('small');
    const big = await load('big');
    assert.ok(big.train.count >= 9 * small.train.count, `ten times the images (${big.train.count} vs ${small.train.count})`);
    const model = await initialModel();
    const smallTrainer = new TfjsTrainer(runtime, small, { shuffleSeed: 5 });
    const bigTrainer = new TfjsTrainer(runtime, big, { shuffleSeed: 5 });

    // Execute: one epoch each, then 5 steps each.
    const smallEpoch = await trainCounting(smallTrainer, model, TASK);
    const bigEpoch = await trainCounting(bigTrainer, model, TASK);
    const smallSteps = await trainCounting(smallTrainer, model, { ...TASK, localSteps: 5 });
    const bigSteps = await trainCounting(bigTrainer, model, { ...TASK, localSteps: 5 });

    // Assert: epochs, the big site steps ten times as often; localSteps, both exactly 5, numbered 1..5 of 5.
    assert.equal(smallEpoch.seen.length, Math.ceil(small.train.count / 4));
    assert.equal(bigEpoch.seen.length, Math.ceil(big.train.count / 4));
    assert.ok(bigEpoch.seen.length >= 9 * smallEpoch.seen.length);
    for (const { seen } of [smallSteps, bigSteps]) {
      assert.deepEqual(
        seen.map((p) => [p.step, p.steps]),
        [1, 2, 3, 4, 5].map((s) => [s, 5]),
      );
    }
    // The small site (3 batches an epoch) went into a 2nd epoch and stopped after its 2nd batch; the big one stayed in its first.
    assert.deepEqual(
      smallSteps.seen.map((p) => [p.epoch, p.batch, p.epochs]),
      [
        [1, 1, 2],
        [1, 2, 2],
        [1, 3, 2],
        [2, 1, 2],
        [2, 2, 2],
      ],
    );
    assert.ok(bigSteps.seen.every((p) => p.epoch === 1 && p.epochs === 1));
    assert.deepEqual(
      bigEpoch.seen.map((p) => p.step),
      bigEpoch.seen.map((_, i) => i + 1),
      'epochs: steps numbered across the round too',
    );

    // Same batches in the same order: two epochs, or localSteps of exactly two epochs' batches, give the same weights bit for bit.
    const twoEpochs = await smallTrainer.train(
      model,
      { ...TASK, epochs: 2 },
      model.tensors.map((t) => t.name),
    );
    const asSteps = await smallTrainer.train(
      model,
      { ...TASK, epochs: 9, localSteps: 2 * Math.ceil(small.train.count / 4) },
      model.tensors.map((t) => t.name),
    );
    twoEpochs.tensors.forEach((t, i) => assert.deepEqual(t.data, asSteps.tensors[i]!.data, t.name));
    // And 5 steps is not two epochs (6 steps).
    assert.notDeepEqual(smallSteps.r.tensors[0]!.data, twoEpochs.tensors[0]!.data);
  } finally {
    dir.cleanup();
  }
});

test('the round announcement carries localSteps, the round learning rate, the sampling and optimizerState reset; without localSteps the task is as before', () => {
  const config = (task: Record<string, unknown>) =>
    parseConfig(
      aggregatorConfigSchema,
      {
        federation: 'f',
        mqtt: { url: 'mqtt://127.0.0.1:1883' },
        stateDir: '/tmp/never',
        agents: ['a'],
        rounds: 1,
        task,
        model: { architecture: 'small-cnn', inputShape: [16, 16, 3], classes: CLASSES },
      },
      'test',
    ).task;
  const withSteps = new FedAvg(config({ localSteps: 40, learningRate: 0.01, learningRateDecay: 0.5, sampling: 'balanced' })).configureRound({
    round: 3,
    kind: 'train',
    available: ['a'],
    trainRoundsBefore: 2,
  }).task;
  assert.equal(withSteps.localSteps, 40);
  assert.equal(withSteps.learningRate, 0.0025, "the round's own rate: 0.01 x 0.5^2");
  assert.equal(withSteps.sampling, 'balanced');
  assert.equal(withSteps.optimizerState, 'reset');
  const plain = new FedAvg(config({})).configureRound({ round: 1, kind: 'train', available: ['a'], trainRoundsBefore: 0 }).task;
  assert.equal('localSteps' in plain, false, 'unset: not on the wire');
  // An older agent's schema: the fields are optional, and the announcement parses with them.
  const ann = {
    v: 1,
    type: 'round',
    federation: 'f',
    runId: 'r1',
    round: 3,
    state: 'open',
    kind: 'train',
    base: { version: 1, sha256: 'a'.repeat(64), bytes: 10, chunks: 1, chunkBytes: 1024, signature: null },
    task: withSteps,
    classes: CLASSES,
    selected: ['a'],
    minClients: 1,
    deadlineAt: 1,
    chunkBytes: 1024,
    encoding: 'f32',
    issuedAt: 1,
  };
  const parsed = roundAnnouncementSchema.safeParse(ann);
  assert.ok(parsed.success, JSON.stringify(parsed.error?.issues));
  assert.equal(parsed.data.task.localSteps, 40);
  const { localSteps: _s, optimizerState: _o, ...old } = withSteps;
  assert.ok(roundAnnouncementSchema.safeParse({ ...ann, task: old }).success, 'a task without them still parses');
  assert.equal(roundAnnouncementSchema.safeParse({ ...ann, task: { ...withSteps, localSteps: 0 } }).success, false, 'localSteps is a positive integer');
});
