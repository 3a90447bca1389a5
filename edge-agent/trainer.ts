import type { EvalMetrics, ModelMeta, TrainTask } from '../shared/messages.js';
import type { NamedTensor } from '../shared/tensor-bundle.js';

/**
 * The training port of the edge agent. The agent's round logic talks to this interface only;
 * edge-agent/tfjs-trainer.ts implements it with TensorFlow.js, tests may use a fake.
 */
export interface GlobalModel {
  version: number;
  sha256: string;
  meta: ModelMeta;
  tensors: NamedTensor[];
}

export interface TrainProgress {
  epoch: number;
  epochs: number;
  batch: number;
  batchesPerEpoch: number;
  loss: number | null;
}

export interface TrainResult {
  /** The federated tensors after local training. */
  tensors: NamedTensor[];
  sampleCount: number;
  metricsAfter: EvalMetrics;
  trainMs: number;
}

export interface Trainer {
  /** tfjs backend in use (`tensorflow`, `cpu`, ...). */
  readonly backend: string;
  readonly samples: { train: number; test: number };
  /** The model on the local test split. */
  evaluate(model: GlobalModel): Promise<EvalMetrics>;
  /**
   * Train `task.epochs` epochs from the given weights. Only `federatedNames` train (the rest is
   * frozen) and come back. Checks `signal` at every batch boundary.
   */
  train(model: GlobalModel, task: TrainTask, federatedNames: readonly string[], options: { signal?: AbortSignal; onProgress?: (p: TrainProgress) => void }): Promise<TrainResult>;
}
