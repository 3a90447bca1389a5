import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { Tensor } from '@tensorflow/tfjs';
import { loadTf } from '../training/backend.js';
import { loadDataset, type LocalDataset } from '../training/image-folder.js';
import { jsDecoder } from '../training/images.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { modelFromWeights } from '../training/model-io.js';
import { normalizeInPlace } from '../training/preprocess.js';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import type { GlobalModel, Trainer } from '../training/trainer.js';
import { batchNormLayers, momentsOfValues } from '../shared/fl/bn-statistics.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { modelMetaSchema, type ModelMeta } from '../shared/protocol/messages.js';
import { runRounds, type Participant } from '../experiment/rounds.js';
import type { BatchNormMode } from '../experiment/batch-norm-rounds.js';
import { tempDir, tinyDataset } from './helpers.js';

/**
 * Batch normalisation across sites in the experiment's in-process loop (small-cnn with BN, 16 px,
 * two non-IID sites): pooled-statistics gives the global model the statistics of the pooled
 * data; FedBN never sends BN tensors and each site keeps its own.
 */

const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const SITES = ['site-a', 'site-b'];
const TASK = { epochs: 1, batchSize: 8, learningRate: 0.003, optimizer: 'adam' as const, classWeighting: 'auto' as const, sampling: 'shuffle' as const };

async function setup(dir: string) {
  const runtime = await loadTf('auto');
  await tinyDataset(dir, SITES, 5, 16);
  const data = new Map<string, LocalDataset>();
  for (const s of SITES) {
    data.set(s, await loadDataset({ dir: join(dir, s), classes: CLASSES, inputShape: [16, 16, 3], testFraction: 0.2, splitSeed: 1, decoder: jsDecoder }));
  }
  const d = decodeBundle<ModelMeta>(
    await buildInitialBundle(runtime.tf, {
      architecture: 'small-cnn',
      batchNorm: true,
      inputShape: [16, 16, 3],
      classes: CLASSES,
      seed: 3,
      normalization: 'per-image',
      initFrom: undefined,
    }),
    modelMetaSchema,
  );
  const initial: GlobalModel = { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
  return { runtime, data, initial };
}

/** Records every call so a test can see what a site was given and what it sent. */
function recording(trainer: Trainer, seen: GlobalModel[]): Trainer {
  return {
    backend: trainer.backend,
    samples: trainer.samples,
    evaluate: (m) => trainer.evaluate(m),
    batchNormStatistics: (m) => trainer.batchNormStatistics(m),
    train: (m, task, names, options) => {
      seen.push(m);
      return trainer.train(m, task, names, options);
    },
  };
}

const run = (initial: GlobalModel, participants: Participant[], batchNorm: BatchNormMode, passes: number) =>
  runRounds({
    initial,
    rounds: 2,
    task: TASK,
    learningRateDecay: 1,
    federate: 'all',
    participants,
    federated: true,
    batchNorm,
    statisticsPasses: passes,
    targetAccuracy: null,
    stopAtTarget: false,
  });

test('pooled-statistics: the global model carries the mean and variance of every BN input over the pooled training images', async () => {
  const dir = tempDir('bn-pooled');
  try {
    const { runtime, data, initial } = await setup(dir.path);
    const { tf } = runtime;
    const layers = batchNormLayers(initial.meta.topology);
    assert.equal(layers.length, 3);
    const participants = SITES.map((id) => ({ id, trainer: new TfjsTrainer(runtime, data.get(id)!, 1) }));
    // Execute: as many passes as BN layers, so every layer is exact.
    const result = await run(initial, participants, 'pooled-statistics', layers.length);
    // Assert: reference computed directly on the pooled images, in float64, layer by layer.
    const final = result.final;
    const m = await modelFromWeights(tf, final.meta.topology, final.tensors);
    try {
      const images: Float32Array[] = [];
      for (const s of SITES) {
        const set = data.get(s)!.train;
        const x = new Float32Array(set.count * 16 * 16 * 3);
        await set.read(
          Array.from({ length: set.count }, (_, i) => i),
          x,
        );
        normalizeInPlace(x, set.count, 3, 'per-image');
        images.push(x);
      }
      const total = images.reduce((s, x) => s + x.length / 768, 0);
      const pooledImages = new Float32Array(images.reduce((s, x) => s + x.length, 0));
      let at = 0;
      for (const x of images) pooledImages.set(x, (at += x.length) - x.length);
      let t: Tensor = tf.tensor4d(pooledImages, [total, 16, 16, 3]);
      for (const layer of m.layers) {
        if (layer.getClassName() === 'BatchNormalization') {
          const channels = t.shape.at(-1)!;
          const ref = momentsOfValues(layer.name, t.dataSync(), channels);
          const mean = final.tensors.find((x) => x.name === `${layer.name}/moving_mean`)!.data;
          const variance = final.tensors.find((x) => x.name === `${layer.name}/moving_variance`)!.data;
          for (let c = 0; c < channels; c++) {
            const v = ref.m2[c]! / ref.count;
            assert.ok(Math.abs(mean[c]! - ref.mean[c]!) <= 1e-4 * Math.max(1, Math.abs(ref.mean[c]!)), `${layer.name} mean[${c}] ${mean[c]} vs ${ref.mean[c]}`);
            assert.ok(Math.abs(variance[c]! - v) <= 1e-4 * Math.max(1, v), `${layer.name} variance[${c}] ${variance[c]} vs ${v}`);
          }
        }
        const next = layer.apply(t, { training: false }) as Tensor;
        t.dispose();
        t = next;
      }
      t.dispose();
      // The averaged model's statistics are not those: the statistics pass changed them.
      const averaged = await run(initial, participants, 'average', 1);
      const name = `${layers[1]}/moving_variance`;
      const a = averaged.final.tensors.find((x) => x.name === name)!.data;
      const p = final.tensors.find((x) => x.name === name)!.data;
      assert.ok(
        a.some((v, i) => Math.abs(v - p[i]!) > 1e-3 * Math.max(1, p[i]!)),
        'averaging gives other statistics',
      );
      // Statistics bytes are counted: per site, pass and layer a count and two float64 vectors.
      assert.ok(result.rounds.every((r) => r.statisticsBytesUp === 2 * 3 * (layers.length * 8 + 16 * (8 + 16 + 32))));
    } finally {
      m.dispose();
    }
  } finally {
    dir.cleanup();
  }
});

test('local (FedBN): BN tensors never leave a site, each site keeps its own across rounds and is judged with them', async () => {
  const dir = tempDir('bn-local');
  try {
    const { runtime, data, initial } = await setup(dir.path);
    const layers = batchNormLayers(initial.meta.topology);
    const seen = new Map(SITES.map((s) => [s, [] as GlobalModel[]]));
    const participants = SITES.map((id) => ({ id, trainer: recording(new TfjsTrainer(runtime, data.get(id)!, 1), seen.get(id)!) }));
    // Execute
    const result = await run(initial, participants, 'local', 1);
    // Assert: the global versions' BN tensors are the initial ones (never averaged) ...
    const bn = (m: GlobalModel) => m.tensors.filter((t) => layers.some((l) => t.name.startsWith(`${l}/`)));
    const conv = (m: GlobalModel) => m.tensors.find((t) => t.name === 'block1_conv1/kernel')!.data;
    const round2 = SITES.map((s) => seen.get(s)![1]!);
    // ... both sites start round 2 from the same averaged convolution ...
    assert.deepEqual(conv(round2[0]!), conv(round2[1]!));
    assert.notDeepEqual(conv(round2[0]!), conv(initial));
    // ... but each from its own BN tensors, different from each other and from the initial ones.
    const gamma = (m: GlobalModel) => bn(m).find((t) => t.name.endsWith('block1_conv1_bn/gamma'))!.data;
    assert.notDeepEqual(gamma(round2[0]!), gamma(round2[1]!));
    assert.notDeepEqual(gamma(round2[0]!), gamma(initial));
    // The site models at the end are the final weights with each site's BN; the global one has pooled statistics.
    assert.deepEqual(Object.keys(result.siteModels!), SITES);
    assert.notDeepEqual(gamma(result.siteModels!['site-a']!), gamma(result.siteModels!['site-b']!));
    // Update bytes: without the BN tensors (an all-tensor bundle is bigger).
    const averaged = await run(
      initial,
      participants.map((p) => ({ ...p, trainer: new TfjsTrainer(runtime, data.get(p.id)!, 1) })),
      'average',
      1,
    );
    const bnBytes = bn(initial).reduce((s, t) => s + t.data.byteLength, 0);
    assert.ok(averaged.rounds[0]!.bytesUp - result.rounds[0]!.bytesUp >= 2 * bnBytes, 'FedBN updates carry no BN tensors');
  } finally {
    dir.cleanup();
  }
});
