import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadDataset } from '../training/image-folder.js';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import type { BatchBoundary, GlobalModel, TrainResult } from '../training/trainer.js';
import { TrainingSession } from '../edge-agent/training-session.js';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { modelMetaSchema, type ModelMeta, type TrainTask } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle, sha256Hex } from '../shared/bundle/tensor-bundle.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { tempDir, tinyDataset } from './helpers.js';

const task: TrainTask = { epochs: 2, batchSize: 8, learningRate: 0.01, optimizer: 'adam', classWeighting: 'auto', federated: 'all' };

async function setup() {
  const dir = tempDir('session');
  await tinyDataset(join(dir.path, 'data'), ['site-a'], 14);
  const runtime = await loadTf('cpu');
  const bundle = await buildInitialBundle(runtime.tf, {
    architecture: 'small-cnn',
    inputShape: [16, 16, 3],
    classes: [...INSPECTION_CLASSES],
    seed: 5,
    normalization: 'per-image',
  });
  const decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
  const model: GlobalModel = { version: 0, sha256: sha256Hex(bundle), meta: decoded.header.meta, tensors: bundleTensors(decoded) };
  const data = await loadDataset({
    dir: join(dir.path, 'data', 'site-a'),
    classes: INSPECTION_CLASSES,
    inputShape: [16, 16, 3],
    testFraction: 0.25,
    splitSeed: 1,
  });
  // A fresh trainer per run: same seed, same shuffles, so runs are comparable bit for bit.
  const trainer = () => new TfjsTrainer(runtime, data, 9);
  const names = model.tensors.map((t) => t.name);
  return { dir, model, trainer, names };
}

const bits = (r: TrainResult) => r.tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64')).join('|');

test('a training session paused at a batch boundary and resumed ends with exactly the weights of an uninterrupted run', { timeout: 120_000 }, async () => {
  const { dir, model, trainer, names } = await setup();
  try {
    const straight = await new TrainingSession(trainer(), model, task, names, { signal: new AbortController().signal }).result;

    let batchesSeen = 0;
    const progressWhilePaused: number[] = [];
    const session: TrainingSession = new TrainingSession(trainer(), model, task, names, {
      signal: new AbortController().signal,
      onProgress: () => {
        batchesSeen++;
        if (session.state === 'paused') progressWhilePaused.push(batchesSeen);
        if (batchesSeen === 3) session.pause(); // the window closes during batch 3
      },
    });
    const pausedAt = await new Promise<BatchBoundary>((resolve) => session.once('paused', resolve));
    assert.deepEqual(
      pausedAt,
      { epoch: 1, epochs: 2, batch: 4, batchesPerEpoch: pausedAt.batchesPerEpoch, step: 4, steps: 2 * pausedAt.batchesPerEpoch },
      'held before the 4th batch of the 1st epoch (numbered from 1), having kept the first 3',
    );
    assert.equal(session.state, 'paused');
    // Held: no batch runs while paused.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(batchesSeen, 3);
    assert.ok(session.pausedMs >= 250);
    const resumed = new Promise<BatchBoundary>((resolve) => session.once('resumed', resolve));
    session.resume();
    assert.deepEqual(await resumed, pausedAt, 'continues from the same batch');
    const result = await session.result;
    assert.equal(session.state, 'done');
    assert.deepEqual(progressWhilePaused, []);
    assert.equal(batchesSeen, 2 * pausedAt.batchesPerEpoch, 'every batch ran exactly once');
    assert.equal(bits(result), bits(straight), 'bit-identical weights: the pause lost nothing and repeated nothing');
    assert.equal(result.sampleCount, straight.sampleCount);
    assert.ok(result.trainMs < 250 + straight.trainMs * 3, `trainMs (${result.trainMs}) excludes the ${session.pausedMs} ms paused`);

    // pause then resume before the boundary is reached: nothing happens
    const quick = new TrainingSession(trainer(), model, { ...task, epochs: 1 }, names, { signal: new AbortController().signal });
    let pausedEvents = 0;
    quick.on('paused', () => pausedEvents++);
    quick.pause();
    quick.resume();
    await quick.result;
    assert.equal(pausedEvents, 0);
  } finally {
    dir.cleanup();
  }
});

test('a paused session ends with the abort reason when its round closes; nothing is returned', { timeout: 120_000 }, async () => {
  const { dir, model, trainer, names } = await setup();
  try {
    const ac = new AbortController();
    const session = new TrainingSession(trainer(), model, task, names, { signal: ac.signal });
    session.pause();
    const at = await new Promise<BatchBoundary>((resolve) => session.once('paused', resolve));
    assert.deepEqual([at.epoch, at.batch], [1, 1], 'paused before the first batch, epoch 1 batch 1');
    ac.abort(new FedlineError(ErrorCodes.ROUND_CLOSED, 'round 4 closed'));
    await assert.rejects(session.result, (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.ROUND_CLOSED);
    assert.equal(session.state, 'failed');
  } finally {
    dir.cleanup();
  }
});
