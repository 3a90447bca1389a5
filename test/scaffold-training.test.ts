import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadDataset } from '../training/image-folder.js';
import { jsDecoder } from '../training/images.js';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import type { GlobalModel, ScaffoldControl } from '../training/trainer.js';
import { modelMetaSchema, type ModelMeta, type TrainTask } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { tempDir, tinyDataset } from './helpers.js';

/**
 * SCAFFOLD's correction in the agent's training step (training/tfjs-trainer.ts): with c = c_i = 0
 * the trainer gives exactly the weights of plain training; with c - c_i = d, one SGD step moves every
 * trained weight by a further -η_l d (the gradient is g - c_i + c), and the steps taken are reported.
 */

const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const TASK: TrainTask = { epochs: 2, batchSize: 8, learningRate: 0.01, optimizer: 'sgd', classWeighting: 'auto', sampling: 'shuffle', federated: 'all' };

async function globalModel(): Promise<GlobalModel> {
  const { tf } = await loadTf('auto');
  const d = decodeBundle<ModelMeta>(
    await buildInitialBundle(tf, {
      architecture: 'small-cnn',
      width: 0.125,
      inputShape: [16, 16, 3],
      classes: CLASSES,
      seed: 3,
      normalization: 'per-image',
      initFrom: undefined,
    }),
    modelMetaSchema,
  );
  return { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
}

const filled = (model: GlobalModel, value: number) => new Map(model.tensors.map((t) => [t.name, new Float32Array(t.data.length).fill(value)]));

test('SCAFFOLD training: c = c_i = 0 is bit-identical to plain training; c - c_i = d adds -η_l d per SGD step; steps reported', async () => {
  // Prepare: one small site and the global model.
  const runtime = await loadTf('auto');
  const dir = tempDir('scaffold-training');
  try {
    await tinyDataset(dir.path, ['site'], 8, 16);
    const model = await globalModel();
    const data = await loadDataset({
      dir: join(dir.path, 'site'),
      classes: CLASSES,
      inputShape: [16, 16, 3],
      testFraction: 0.25,
      splitSeed: 1,
      decoder: jsDecoder,
    });
    const names = model.tensors.map((t) => t.name);
    const train = (task: TrainTask, control?: ScaffoldControl) =>
      new TfjsTrainer(runtime, data, { shuffleSeed: 5 }).train(model, task, names, control ? { control } : {});

    // Execute: plain; SCAFFOLD with zero variates (explicit zeros, and none at all); one full-batch SGD step with and without d = 0.75 - 0.5.
    const plain = await train(TASK);
    const zeros = await train({ ...TASK, scaffold: true }, { c: filled(model, 0), ci: filled(model, 0) });
    const none = await train({ ...TASK, scaffold: true });
    const oneStep: TrainTask = { ...TASK, epochs: 1, batchSize: 1024 };
    const tensorsBefore = runtime.tf.memory().numTensors;
    const stepPlain = await train(oneStep);
    const stepCorrected = await train({ ...oneStep, scaffold: true }, { c: filled(model, 0.75), ci: filled(model, 0.5) });

    // Assert
    plain.tensors.forEach((t, i) => assert.deepEqual(zeros.tensors[i]!.data, t.data, `${t.name}: zero variates change nothing`));
    plain.tensors.forEach((t, i) => assert.deepEqual(none.tensors[i]!.data, t.data, `${t.name}: absent variates are zero`));
    const batches = Math.ceil(data.train.count / TASK.batchSize);
    assert.equal(plain.steps, TASK.epochs * batches);
    assert.equal(stepCorrected.steps, 1);
    assert.equal(runtime.tf.memory().numTensors, tensorsBefore, 'the corrections are disposed');
    let trained = 0;
    stepPlain.tensors.forEach((t, i) => {
      const corrected = stepCorrected.tensors[i]!.data;
      // BN moving statistics are not trained by the optimizer: no correction there.
      const shift = /moving/.test(t.name) ? 0 : -TASK.learningRate * 0.25;
      if (shift) trained++;
      for (let k = 0; k < t.data.length; k++)
        assert.ok(Math.abs(corrected[k]! - (t.data[k]! + shift)) < 1e-5, `${t.name}[${k}]: ${corrected[k]} vs ${t.data[k]! + shift}`);
    });
    assert.ok(trained > 4, 'kernels, biases and BN scales were corrected');
  } finally {
    dir.cleanup();
  }
});
