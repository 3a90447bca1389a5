import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { augmentBatch, flipHorizontal, flipVertical, NO_AUGMENTATION, rotate } from '../training/augment.js';
import { loadDataset, type ImageSet } from '../training/image-folder.js';
import { jsDecoder } from '../training/images.js';
import { epochOrder, evaluateOnSet, freezeAllBut, TfjsTrainer } from '../training/tfjs-trainer.js';
import { normalizeInPlace } from '../training/preprocess.js';
import type { GlobalModel } from '../training/trainer.js';
import { modelMetaSchema, type ModelMeta, type TrainTask } from '../shared/protocol/messages.js';
import { mulberry32 } from '../shared/util/random.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { modelFromWeights, weightNames } from '../training/model-io.js';
import { tempDir, tinyDataset } from './helpers.js';

const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const TASK: TrainTask = { epochs: 2, batchSize: 8, learningRate: 0.003, optimizer: 'adam', classWeighting: 'auto', sampling: 'shuffle', federated: 'all' };

async function globalModel(architecture: 'small-cnn' | 'vgg11', size: number): Promise<GlobalModel> {
  const { tf } = await loadTf('auto');
  const d = decodeBundle<ModelMeta>(
    await buildInitialBundle(tf, {
      architecture,
      width: 0.125,
      inputShape: [size, size, 3],
      classes: CLASSES,
      seed: 3,
      normalization: 'per-image',
      initFrom: undefined,
    }),
    modelMetaSchema,
  );
  return { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
}

test('federate head: only the head trains (the feature extractor stays as it was) and only the head comes back', async () => {
  const runtime = await loadTf('auto');
  const { tf } = runtime;
  const model = await globalModel('vgg11', 32);
  const head = new Set(model.meta.headTensors);
  const m = await modelFromWeights(tf, model.meta.topology, model.tensors);
  try {
    assert.deepEqual(freezeAllBut(m, head), ['head_dense1', 'head_predictions']);
    const names = weightNames(m);
    const before = new Map(m.weights.map((w, i) => [names[i]!, w.read().dataSync().slice()]));
    const optimizer = tf.train.adam(0.01);
    const vars = m.trainableWeights.map((w) => (w as unknown as { val: import('@tensorflow/tfjs').Variable }).val);
    tf.tidy(() => {
      const x = tf.randomNormal([4, 32, 32, 3], 0, 1, 'float32', 1);
      const y = tf.oneHot(tf.tensor1d([0, 1, 2, 3], 'int32'), 4);
      optimizer.minimize(
        () => tf.losses.softmaxCrossEntropy(y, m.apply(x, { training: true }) as import('@tensorflow/tfjs').Tensor2D) as import('@tensorflow/tfjs').Scalar,
        false,
        vars,
      );
    });
    optimizer.dispose();
    const after = weightNames(m);
    m.weights.forEach((w, i) => {
      const name = after[i]!;
      const changed = w
        .read()
        .dataSync()
        .some((v, k) => v !== before.get(name)![k]);
      if (name.endsWith('/kernel')) assert.equal(changed, head.has(name), `${name} ${head.has(name) ? 'trains' : 'is frozen'}`);
    });
  } finally {
    m.dispose();
  }
  const dir = tempDir('trainer-head');
  try {
    await tinyDataset(dir.path, ['site'], 6, 32);
    const data = await loadDataset({
      dir: join(dir.path, 'site'),
      classes: CLASSES,
      inputShape: [32, 32, 3],
      testFraction: 0.25,
      splitSeed: 1,
      decoder: jsDecoder,
    });
    const trainer = new TfjsTrainer(runtime, data, { shuffleSeed: 1 });
    const result = await trainer.train(model, { ...TASK, epochs: 1, federated: 'head' }, [...head]);
    assert.deepEqual(
      result.tensors.map((t) => t.name),
      model.meta.headTensors,
    );
  } finally {
    dir.cleanup();
  }
});

test('streaming from disk (no decoded-image cache) trains to exactly the same weights as the in-memory cache; memory stays flat', async () => {
  const runtime = await loadTf('auto');
  const dir = tempDir('trainer-stream');
  try {
    await tinyDataset(dir.path, ['site'], 8, 16);
    const model = await globalModel('small-cnn', 16);
    const load = (cacheBytes: number) =>
      loadDataset({ dir: join(dir.path, 'site'), classes: CLASSES, inputShape: [16, 16, 3], testFraction: 0.25, splitSeed: 1, cacheBytes, decoder: jsDecoder });
    const cachedData = await load(64 * 1024 * 1024);
    const streamedData = await load(0);
    assert.equal(cachedData.train.cached, cachedData.train.count);
    assert.equal(streamedData.train.cached + streamedData.test.cached, 0, 'nothing kept in memory');
    const names = model.tensors.map((t) => t.name);
    const a = await new TfjsTrainer(runtime, cachedData, { shuffleSeed: 5 }).train(model, TASK, names);
    const tensorsBefore = runtime.tf.memory().numTensors;
    const b = await new TfjsTrainer(runtime, streamedData, { shuffleSeed: 5 }).train(model, TASK, names);
    assert.equal(runtime.tf.memory().numTensors, tensorsBefore, 'no tensor left behind by a round of training');
    a.tensors.forEach((t, i) => assert.deepEqual(t.data, b.tensors[i]!.data, t.name));
    assert.deepEqual(a.metricsAfter, b.metricsAfter);
  } finally {
    dir.cleanup();
  }
});

test('balanced sampling draws every class about equally often, seeded; shuffle visits each image once', () => {
  const labels = Int32Array.from([...new Array(90).fill(0), ...new Array(10).fill(1), ...new Array(20).fill(3)]);
  const order = epochOrder(labels, 'balanced', mulberry32(1));
  assert.equal(order.length, labels.length);
  const counts = [0, 0, 0, 0];
  for (const i of order) counts[labels[i]!]!++;
  for (const c of [0, 1, 3]) assert.ok(Math.abs(counts[c]! - 40) <= 12, `class ${c}: ${counts[c]} of 120 draws`);
  assert.equal(counts[2], 0, 'an absent class is never drawn');
  assert.deepEqual(epochOrder(labels, 'balanced', mulberry32(1)), order, 'seeded');
  const shuffled = epochOrder(labels, 'shuffle', mulberry32(2));
  assert.deepEqual(
    [...shuffled].sort((x, y) => x - y),
    Array.from(labels, (_, i) => i),
  );
});

test('augmentation: flips mirror, a zero rotation is the identity, a 90-degree rotation turns a square image, values stay in [0, 1], seeded', () => {
  const h = 3;
  const w = 3;
  const img = Float32Array.from({ length: h * w }, (_, i) => i / 10);
  const f = img.slice();
  flipHorizontal(f, h, w, 1);
  assert.deepEqual(
    [...f.subarray(0, 3)].map((v) => Math.round(v * 10)),
    [2, 1, 0],
  );
  flipHorizontal(f, h, w, 1);
  assert.deepEqual(f, img);
  flipVertical(f, h, w, 1);
  assert.deepEqual(
    [...f.subarray(0, 3)].map((v) => Math.round(v * 10)),
    [6, 7, 8],
  );
  const r = img.slice();
  rotate(r, new Float32Array(9), h, w, 1, 0);
  assert.deepEqual(r, img);
  rotate(r, new Float32Array(9), h, w, 1, Math.PI / 2);
  // +90 degrees turns the image clockwise as displayed (rows go down): the left column becomes the top row.
  assert.deepEqual(
    [...r].map((v) => Math.round(v * 10)),
    [6, 3, 0, 7, 4, 1, 8, 5, 2],
  );
  const batch = Float32Array.from({ length: 2 * 8 * 8 * 3 }, (_, i) => (i % 17) / 16);
  const opts = { flip: 'both' as const, brightness: 0.4, contrast: 0.5, rotationDeg: 15 };
  const a = batch.slice();
  const b = batch.slice();
  augmentBatch(a, 2, [8, 8, 3], opts, mulberry32(3));
  augmentBatch(b, 2, [8, 8, 3], opts, mulberry32(3));
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, batch);
  assert.ok(a.every((v) => v >= 0 && v <= 1));
  const c = batch.slice();
  augmentBatch(c, 2, [8, 8, 3], NO_AUGMENTATION, mulberry32(3));
  assert.deepEqual(c, batch, 'no augmentation: untouched');
});

test('evaluation loss is the mean cross-entropy of the true class over the whole set, across evaluation batches', async () => {
  const { tf } = await loadTf('auto');
  const size = 16;
  const per = size * size * 3;
  const count = 150; // more than two evaluation batches of 64
  const rng = mulberry32(11);
  const pixels = Float32Array.from({ length: count * per }, () => rng());
  const labels = Int32Array.from({ length: count }, (_, i) => i % CLASSES.length);
  const set: ImageSet = {
    count,
    labels,
    shape: [size, size, 3],
    paths: [],
    cached: count,
    async read(indices, out) {
      for (let j = 0; j < indices.length; j++) out.set(pixels.subarray(indices[j]! * per, (indices[j]! + 1) * per), j * per);
    },
  };
  const model = await globalModel('small-cnn', size);
  const m = await modelFromWeights(tf, model.meta.topology, model.tensors);
  try {
    const metrics = await evaluateOnSet(tf, m, set, 'per-image', CLASSES.length);
    const x = pixels.slice();
    normalizeInPlace(x, count, 3, 'per-image');
    const probs = tf.tidy(() => (m.predict(tf.tensor4d(x, [count, size, size, 3])) as import('@tensorflow/tfjs').Tensor2D).arraySync());
    const expected = probs.reduce((s, p, i) => s - Math.log(Math.min(1, Math.max(1e-7, p[labels[i]!]!))), 0) / count;
    assert.ok(metrics.loss !== null);
    assert.ok(Math.abs(metrics.loss - expected) < 1e-4 * Math.max(1, expected), `loss ${metrics.loss} vs ${expected}`);
    assert.equal(metrics.samples, count);
  } finally {
    m.dispose();
  }
});
