import { classificationMetrics } from '../../shared/fl/classification-metrics.js';
import type { EvalMetrics, TrainTask } from '../../shared/protocol/messages.js';
import type { LayerMoments } from '../../shared/fl/bn-statistics.js';
import type { GlobalModel, Trainer, TrainOptions, TrainResult } from '../../training/trainer.js';

/**
 * A deterministic stand-in for local training, for tests about what happens to updates rather
 * than about learning: every federated weight moves from the base by a smooth function of the
 * weight's index, the line (`seed`) and the base version, so each line and each round gives
 * different weights of mixed sign; the sample count differs per line and per round as well.
 * Evaluation is a fixed confusion pattern over `testSamples` images.
 */
export class FakeTrainer implements Trainer {
  readonly backend = 'fake';
  readonly samples: { train: number; test: number };
  private readonly seed: number;

  constructor(seed: number, testSamples = 12) {
    this.seed = seed;
    this.samples = { train: this.sampleCount(0), test: testSamples };
  }

  /** Samples this line claims when training from base version `version`. */
  sampleCount(version: number): number {
    return 20 + 9 * this.seed + 3 * version;
  }

  async evaluate(model: GlobalModel): Promise<EvalMetrics> {
    const classes = model.meta.classes.length;
    const labels = Array.from({ length: this.samples.test }, (_, i) => i % classes);
    // One wrong prediction in (seed + version) % 4 + 2: metrics that differ per line and round.
    const every = ((this.seed + model.version) % 4) + 2;
    const predictions = labels.map((l, i) => (i % every === 0 ? (l + 1) % classes : l));
    return classificationMetrics(labels, predictions, classes, 0.5 + 0.01 * this.seed);
  }

  /** The fake models have no batch normalisation layers. */
  batchNormStatistics(): Promise<LayerMoments[]> {
    return Promise.resolve([]);
  }

  async train(model: GlobalModel, _task: TrainTask, federatedNames: readonly string[], options: TrainOptions): Promise<TrainResult> {
    options.signal?.throwIfAborted();
    const { seed } = this;
    const tensors = model.tensors
      .filter((t) => federatedNames.includes(t.name))
      .map((t) => {
        const data = new Float32Array(t.data.length);
        const scale = 0.05 * (1 + seed / 4);
        for (let i = 0; i < data.length; i++) data[i] = t.data[i]! + scale * Math.sin(0.7 * i + 1.9 * seed + 0.3 * model.version);
        return { name: t.name, shape: [...t.shape], dtype: 'float32' as const, data };
      });
    return { tensors, sampleCount: this.sampleCount(model.version), metricsAfter: await this.evaluate(model), trainMs: 1, steps: 1 };
  }
}
