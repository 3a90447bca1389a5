import type { EvalMetrics, ModelMeta, TrainTask } from '../shared/protocol/messages.js';
import type { NamedTensor } from '../shared/bundle/tensor-bundle.js';
import type { LayerMoments } from '../shared/fl/bn-statistics.js';

/**
 * The training port of the edge agent. The agent's round logic talks to this interface only;
 * training/tfjs-trainer.ts implements it with TensorFlow.js, tests may use a fake.
 */
export interface GlobalModel {
  version: number;
  sha256: string;
  meta: ModelMeta;
  tensors: NamedTensor[];
}

/**
 * After a batch: `batch` of `batchesPerEpoch` done in `epoch` of `epochs` (both numbered from 1, as
 * logs, status and events show them), which was optimizer step `step` of the round's `steps`. With
 * the task's `localSteps` set, `steps` is localSteps and `epochs` the epochs begun to make them
 * (ceil(localSteps / batchesPerEpoch)); the last one may stop before its last batch.
 */
export interface TrainProgress {
  epoch: number;
  epochs: number;
  batch: number;
  batchesPerEpoch: number;
  /** Optimizer steps done this round, 1..steps. */
  step: number;
  steps: number;
  loss: number | null;
}

/** Where training stands between two batches: before `batch` of `epoch` (both numbered from 1: epoch 1, batch 1 is the start), i.e. before optimizer step `step` of `steps`. */
export interface BatchBoundary {
  epoch: number;
  epochs: number;
  batch: number;
  batchesPerEpoch: number;
  step: number;
  steps: number;
}

export interface TrainOptions {
  signal?: AbortSignal;
  onProgress?: (p: TrainProgress) => void;
  /**
   * Awaited before every batch. While the promise is pending, training holds still with all its
   * state (weights, optimizer, shuffle order, position): this is how a training window closing
   * pauses training at a batch boundary and how it resumes (edge-agent/training-session.ts).
   * A rejection ends training with that error.
   */
  atBatchBoundary?: (at: BatchBoundary) => Promise<void> | void;
  /**
   * SCAFFOLD (task.scaffold): the server variate c and this client's c_i, by tensor name (null or a
   * missing tensor: zero). After every optimizer step each trainable variable moves by a further
   * -learningRate (c - c_i) (with sgd: the step follows g - c_i + c).
   */
  control?: ScaffoldControl;
  /**
   * A learning-rate schedule within this one call: the optimizer's rate for epoch `epoch`
   * (counted from 0) instead of task.learningRate, the optimizer's state (Adam's moments) kept
   * across epochs. Local use only (pretraining's `learningRateDecay`), never on the wire; not
   * with SCAFFOLD, whose correction is scaled by task.learningRate.
   */
  learningRateAt?: (epoch: number) => number;
  /**
   * Awaited after every full epoch (numbered from 1) with the model's metrics on the held-out
   * split as it stands then (inference mode: no weight, statistic or random draw of training
   * changes). Local use only (`fedline pretrain --eval-each-epoch`): when, if ever, a base learns
   * to tell two classes apart. `weights()` copies out the federated tensors as they stand after
   * that epoch (pretraining's keep-best: the best held-out epoch's weights, not the last's).
   */
  afterEpoch?: (epoch: number, heldOut: EvalMetrics, weights: () => Promise<NamedTensor[]>) => Promise<void> | void;
}

export interface ScaffoldControl {
  c: ReadonlyMap<string, Float32Array> | null;
  ci: ReadonlyMap<string, Float32Array> | null;
}

export interface TrainResult {
  /** The federated tensors after local training. */
  tensors: NamedTensor[];
  sampleCount: number;
  metricsAfter: EvalMetrics;
  trainMs: number;
  /** Optimizer steps taken (batches trained): SCAFFOLD's K. */
  steps: number;
}

export interface Trainer {
  /** tfjs backend in use (`tensorflow`, `cpu`, ...). */
  readonly backend: string;
  readonly samples: { train: number; test: number };
  /** The model on the local test split. `signal`: the round's work ends (a plant's evaluation is a whole plant round: plant/plant-trainer.ts). */
  evaluate(model: GlobalModel, options?: { signal?: AbortSignal }): Promise<EvalMetrics>;
  /**
   * Train `task.epochs` epochs (or, when set, `task.localSteps` optimizer steps) from the given weights. Only `federatedNames` train (the rest is
   * frozen) and come back. At every batch boundary: awaits `atBatchBoundary`, then checks `signal`.
   */
  train(model: GlobalModel, task: TrainTask, federatedNames: readonly string[], options: TrainOptions): Promise<TrainResult>;
  /**
   * The batch normalisation statistics pass: per BN layer and channel, the count, mean and M2 of
   * the layer's input over the local training images, with the given weights and the moving
   * statistics the model carries (inference mode, no augmentation). Empty for a model without BN.
   * Pooled across sites (shared/fl/bn-statistics.ts) they give the global model's statistics.
   */
  batchNormStatistics(model: GlobalModel): Promise<LayerMoments[]>;
}
