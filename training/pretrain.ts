import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadDataset } from './image-folder.js';
import { createImageDecoder } from './images.js';
import { TfjsTrainer } from './tfjs-trainer.js';
import type { GlobalModel } from './trainer.js';
import type { ModelSpec } from '../shared/config/service-config.js';
import type { EvalMetrics, ModelMeta } from '../shared/protocol/messages.js';
import type { NamedTensor } from '../shared/bundle/tensor-bundle.js';
import { modelMetaSchema } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { loadTf, type BackendPreference } from './backend.js';
import { buildInitialBundle } from './initial-model.js';
import { modelFromWeights, saveLayersModelToDir } from './model-io.js';
import { NO_AUGMENTATION, type AugmentationOptions } from './augment.js';

/** Written next to model.json: how the starting model was made. */
export const PRETRAIN_INFO_FILE = 'pretrain.json';

export interface PretrainOptions {
  /** `<dir>/<CLASS>/*.png|jpg` reference images. */
  dataDir: string;
  model: Pick<ModelSpec, 'architecture' | 'width' | 'inputShape' | 'classes' | 'seed' | 'normalization'> & Partial<Pick<ModelSpec, 'head' | 'batchNorm'>>;
  epochs: number;
  batchSize: number;
  learningRate: number;
  /**
   * Per-epoch factor of the learning rate: epoch e (from 1) trains at learningRate x decay^(e-1),
   * Adam's moments kept across epochs. Default 1 (constant, as before).
   */
  learningRateDecay?: number;
  /** Kernel init of the model before pretraining: seeded (Glorot, the default) or he (He-normal: deep VGGs train from scratch). */
  init?: 'seeded' | 'he';
  /** Training-time augmentation of the reference images (flips, lighting, small turns). Default none. */
  augmentation?: AugmentationOptions;
  /** Where the tfjs layers model folder goes (usable as `model.initFrom`). */
  out: string;
  backend?: BackendPreference;
  /** After each epoch, numbered from 1. */
  onEpoch?: (epoch: number, loss: number | null) => void;
  /**
   * After each epoch, its metrics on the held-out 20 % (an evaluation per epoch, nothing of the
   * training changed): whether the base has yet learnt to tell the classes apart. Default none.
   */
  onEpochHeldOut?: (epoch: number, heldOut: EvalMetrics) => void;
  /**
   * Keep the weights of the epoch with the best balanced accuracy on the held-out 20 % (the
   * earliest on a tie) instead of the last epoch's: at a constant rate the OKAY / NOT_OKAY boundary
   * swings from epoch to epoch, so where training stops matters as much as how long it runs. The
   * held-out split then chose the epoch: its figures for that epoch are the best of `epochs` draws,
   * not an unbiased estimate. Default false.
   */
  keepBest?: boolean;
}

/** One epoch as judged on the held-out 20 % (pretrain.json's `heldOutByEpoch` and `best`). */
export interface EpochHeldOut {
  epoch: number;
  accuracy: number;
  balancedAccuracy: number;
  loss: number | null;
}

/** What keep-best chose: the epoch, its held-out metrics, and the last epoch's for comparison. */
export interface KeptEpoch {
  epoch: number;
  metrics: EvalMetrics;
  lastEpoch: number;
  lastMetrics: EvalMetrics;
}

/**
 * Train a starting model centrally on reference images and save it as a tfjs layers model folder,
 * for `model.initFrom`: what a vendor's pretrained network is to the seed paper (ImageNet weights),
 * when those cannot be downloaded. Same builder, trainer and normalisation as the federation.
 */
export async function pretrainBase(
  o: PretrainOptions,
): Promise<{ metrics: EvalMetrics; trainMs: number; backend: string; best: KeptEpoch | null; heldOutByEpoch: EpochHeldOut[] }> {
  const runtime = await loadTf(o.backend ?? 'auto');
  const bundle = await buildInitialBundle(runtime.tf, { ...o.model, initFrom: undefined, ...(o.init ? { init: o.init } : {}) });
  const decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
  const model: GlobalModel = { version: 0, sha256: '', meta: decoded.header.meta, tensors: bundleTensors(decoded) };
  const data = await loadDataset({
    dir: o.dataDir,
    classes: o.model.classes,
    inputShape: o.model.inputShape,
    testFraction: 0.2,
    splitSeed: o.model.seed,
    decoder: await createImageDecoder(),
  });
  const trainer = new TfjsTrainer(runtime, data, { shuffleSeed: o.model.seed, augmentation: o.augmentation ?? NO_AUGMENTATION });
  const decay = o.learningRateDecay ?? 1;
  let lastEpoch = -1;
  const heldOutByEpoch: EpochHeldOut[] = [];
  let best: { epoch: number; metrics: EvalMetrics; tensors: NamedTensor[] } | null = null;
  const afterEpoch = async (epoch: number, heldOut: EvalMetrics, weights: () => Promise<NamedTensor[]>): Promise<void> => {
    heldOutByEpoch.push({ epoch, accuracy: heldOut.accuracy, balancedAccuracy: heldOut.balancedAccuracy, loss: heldOut.loss });
    if (o.keepBest && (best === null || heldOut.balancedAccuracy > best.metrics.balancedAccuracy)) best = { epoch, metrics: heldOut, tensors: await weights() };
    o.onEpochHeldOut?.(epoch, heldOut);
  };
  const result = await trainer.train(
    model,
    {
      epochs: o.epochs,
      batchSize: o.batchSize,
      learningRate: o.learningRate,
      optimizer: 'adam',
      classWeighting: 'auto',
      sampling: 'shuffle',
      federated: 'all',
    },
    model.tensors.map((t) => t.name),
    {
      ...(decay !== 1 ? { learningRateAt: (epoch: number) => o.learningRate * decay ** epoch } : {}),
      ...(o.onEpochHeldOut || o.keepBest ? { afterEpoch } : {}),
      onProgress: (p) => {
        if (p.batch === p.batchesPerEpoch && p.epoch !== lastEpoch) {
          lastEpoch = p.epoch;
          o.onEpoch?.(p.epoch, p.loss);
        }
      },
    },
  );
  // TypeScript cannot see the callback's assignment: read `best` through a typed alias.
  const kept = best as { epoch: number; metrics: EvalMetrics; tensors: NamedTensor[] } | null;
  const chosen: KeptEpoch | null = kept ? { epoch: kept.epoch, metrics: kept.metrics, lastEpoch: o.epochs, lastMetrics: result.metricsAfter } : null;
  const trained = await modelFromWeights(runtime.tf, model.meta.topology, kept ? kept.tensors : result.tensors);
  try {
    await saveLayersModelToDir(runtime.tf, trained, o.out);
  } finally {
    trained.dispose();
  }
  // What the folder is, for whoever reuses it (the experiment reports it).
  const info = {
    createdAt: new Date().toISOString(),
    data: o.dataDir,
    architecture: o.model.architecture,
    width: o.model.width,
    batchNorm: o.model.batchNorm ?? false,
    inputShape: o.model.inputShape,
    classes: o.model.classes,
    normalization: o.model.normalization,
    epochs: o.epochs,
    learningRate: o.learningRate,
    learningRateDecay: decay,
    init: o.init ?? 'seeded',
    augmentation: o.augmentation ?? NO_AUGMENTATION,
    // The saved weights' held-out metrics: the kept epoch's with keepBest, else the last's.
    metrics: chosen ? chosen.metrics : result.metricsAfter,
    keepBest: o.keepBest ?? false,
    ...(chosen ? { best: chosen } : {}),
    ...(heldOutByEpoch.length ? { heldOutByEpoch } : {}),
    trainMs: result.trainMs,
    backend: runtime.backend,
  };
  await writeFile(join(o.out, PRETRAIN_INFO_FILE), JSON.stringify(info, null, 2) + '\n');
  return { metrics: info.metrics, trainMs: result.trainMs, backend: runtime.backend, best: chosen, heldOutByEpoch };
}

/**
 * Augmentation for pretraining on reference images (`fedline pretrain --augment`, the experiment's
 * `pretrained.augmentation: true`): mirrored parts, lighting and a small turn of the camera, what a
 * vendor's base sees in its own data (ImageNet training crops and flips); it keeps a deep network
 * from memorising a few hundred reference images.
 */
export const REFERENCE_AUGMENTATION: AugmentationOptions = { flip: 'both', brightness: 0.1, contrast: 0.2, rotationDeg: 10 };
