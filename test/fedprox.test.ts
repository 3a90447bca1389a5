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
import { tempDir, tinyDataset } from './helpers.js';

/**
 * FedProx's proximal term in the agent's training step (training/tfjs-trainer.ts): the task's proxMu
 * adds mu (w - w_global) to each training variable's gradient. mu = 0 trains exactly as before;
 * mu > 0 ends the same local epochs closer to the global model.
 */

const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const TASK: TrainTask = { epochs: 3, batchSize: 8, learningRate: 0.01, optimizer: 'sgd', classWeighting: 'auto', sampling: 'shuffle', federated: 'all' };

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

/** ||w - w_global|| over the trained weights (kernels, biases, BN scale/offset; not the moving statistics). */
function drift(model: GlobalModel, tensors: readonly { name: string; data: Float32Array }[]): number {
  const base = new Map(model.tensors.map((t) => [t.name, t.data]));
  let s = 0;
  for (const t of tensors) {
    if (/moving/.test(t.name)) continue;
    const b = base.get(t.name)!;
    for (let i = 0; i < t.data.length; i++) s += (t.data[i]! - b[i]!) ** 2;
  }
  return Math.sqrt(s);
}

test('FedProx: mu = 0 trains bit-identically to a task without proxMu; mu > 0 ends closer to the global model, no tensor left behind', async (t) => {
  // Prepare: one small site and the global model.
  const runtime = await loadTf('auto');
  const dir = tempDir('fedprox');
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
    const train = (task: TrainTask) => new TfjsTrainer(runtime, data, { shuffleSeed: 5 }).train(model, task, names);

    // Execute: the same local epochs without proxMu, with 0, and with a strong pull.
    const plain = await train(TASK);
    const zero = await train({ ...TASK, proxMu: 0 });
    const tensorsBefore = runtime.tf.memory().numTensors;
    const pulled = await train({ ...TASK, proxMu: 20 });

    // Assert
    plain.tensors.forEach((t, i) => assert.deepEqual(zero.tensors[i]!.data, t.data, t.name));
    assert.equal(runtime.tf.memory().numTensors, tensorsBefore, 'the anchors are disposed');
    const dPlain = drift(model, plain.tensors);
    const dPulled = drift(model, pulled.tensors);
    t.diagnostic(`||w - w_global|| after ${TASK.epochs} local epochs: mu 0 ${dPlain.toFixed(4)}, mu 20 ${dPulled.toFixed(4)}`);
    assert.ok(dPlain > 0, 'plain training moved the model');
    assert.ok(dPulled < 0.75 * dPlain, `mu = 20 drift ${dPulled} is not clearly below plain ${dPlain}`);
  } finally {
    dir.cleanup();
  }
});
