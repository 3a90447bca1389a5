import type { Aggregator } from '../aggregator/aggregator.js';
import type { LayerMoments } from '../shared/fl/bn-statistics.js';
import type { RoundRecord } from '../aggregator/round-journal.js';
import type { ModelCache } from '../edge-agent/model-cache.js';
import { pooledMetrics } from '../shared/fl/classification-metrics.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { EvalMetrics, TrainTask } from '../shared/protocol/messages.js';
import type { GlobalModel, Trainer, TrainOptions, TrainResult } from '../training/trainer.js';

/**
 * The plant's "training", as its upstream agent sees it (the edge agent's Trainer port): one round
 * of the plant's own federation. The headquarters model becomes the plant round's base byte for
 * byte (its bundle from the agent's model cache, SHA-256 checked there), the headquarters task
 * goes down unchanged, the plant aggregator runs the round with its strategy, norm screen and
 * sample-claim clip, and its aggregate goes up as the plant's update, weighted by the sample
 * counts that weighed in at the plant (after clipping). Evaluating is a plant evaluation round:
 * the lines' reports, pooled. The release gates of the plant apply to the headquarters models the
 * lines evaluate (the plant's `<root>/model/released`).
 */
export class PlantTrainer implements Trainer {
  readonly backend = 'plant';
  /** The lines' totals as the last plant round saw them (train: samples that weighed in; test: evaluated images). */
  readonly samples = { train: 0, test: 0 };
  private readonly aggregator: Aggregator;
  private readonly cache: ModelCache;
  /** Aborted when the plant stops: its round in progress closes even before the agent's work is aborted. */
  private readonly stopping = new AbortController();

  constructor(aggregator: Aggregator, cache: ModelCache) {
    this.aggregator = aggregator;
    this.cache = cache;
  }

  async evaluate(model: GlobalModel, options: { signal?: AbortSignal } = {}): Promise<EvalMetrics> {
    const { record } = await this.aggregator.runDrivenRound('evaluate', await this.bundleOf(model), { signal: this.untilStopped(options.signal) });
    const reports = Object.values(record.baseMetrics);
    if (reports.length === 0)
      throw new FedlineError(
        ErrorCodes.PLANT_ROUND_EMPTY,
        `plant round ${record.round}: no line evaluated model version ${model.version} (${record.reason ?? 'no reason given'})`,
      );
    this.samples.test = reports.reduce((s, m) => s + m.samples, 0);
    return pooledMetrics(reports);
  }

  /**
   * Pooled statistics need every line's BN moments under the headquarters version; a plant round of
   * kind statistics does not exist yet, so the plant sends none and headquarters keeps that
   * version's averaged statistics (its statistics round closes with the other sites' reports).
   */
  batchNormStatistics(): Promise<LayerMoments[]> {
    return Promise.reject(
      new FedlineError(
        ErrorCodes.MODEL_INCOMPATIBLE,
        'a plant does not take part in statistics rounds (batchNorm pooled-statistics): the version keeps its averaged statistics',
      ),
    );
  }

  async train(model: GlobalModel, task: TrainTask, federatedNames: readonly string[], options: TrainOptions): Promise<TrainResult> {
    const startedAt = Date.now();
    // SCAFFOLD's client variate needs one site's own optimizer steps; a plant's aggregate has none.
    if (task.scaffold)
      throw new FedlineError(
        ErrorCodes.MODEL_INCOMPATIBLE,
        'a plant cannot take part in a SCAFFOLD federation: control variates belong to the sites that train',
      );
    const { record, aggregate } = await this.aggregator.runDrivenRound('train', await this.bundleOf(model), {
      task,
      signal: this.untilStopped(options.signal),
    });
    if (!aggregate) throw new FedlineError(ErrorCodes.PLANT_ROUND_EMPTY, `plant round ${record.round} made no aggregate`);
    const shapes = new Map(model.tensors.map((t) => [t.name, t.shape]));
    const tensors = federatedNames.map((name) => {
      const data = aggregate.tensors.get(name);
      if (!data) throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `the plant aggregate lacks federated tensor "${name}"`);
      return { name, shape: [...shapes.get(name)!], dtype: 'float32' as const, data };
    });
    const sampleCount = Object.values(aggregate.sampleCounts).reduce((s, n) => s + n, 0);
    this.samples.train = sampleCount;
    return { tensors, sampleCount, metricsAfter: metricsAfter(record), trainMs: Date.now() - startedAt, steps: 0 };
  }

  /** Aborted when the agent's work on the round ends (the headquarters round closed, a newer one came) or the plant stops. */
  private untilStopped(signal: AbortSignal | undefined): AbortSignal {
    return signal ? AbortSignal.any([signal, this.stopping.signal]) : this.stopping.signal;
  }

  /** The plant is stopping: a plant round in progress closes without aggregation. */
  stop(): void {
    this.stopping.abort(new FedlineError(ErrorCodes.ABORTED, 'plant stopping'));
  }

  /** The headquarters bundle exactly as downloaded (the cache checks its SHA-256 on every read). */
  private async bundleOf(model: GlobalModel): Promise<Buffer> {
    const bundle = await this.cache.get(model.version, model.sha256);
    if (!bundle) throw new FedlineError(ErrorCodes.MODEL_STORE, `model version ${model.version} is not in the plant's model cache`);
    return bundle;
  }
}

/** The lines' local metrics after training, pooled (those that sent none: their evaluation of the base). */
function metricsAfter(record: RoundRecord): EvalMetrics {
  const after = record.participants.map((a) => record.localMetrics[a] ?? record.baseMetrics[a]).filter((m): m is EvalMetrics => Boolean(m));
  if (after.length === 0) throw new FedlineError(ErrorCodes.PLANT_ROUND_EMPTY, `plant round ${record.round}: no line reported metrics`);
  return pooledMetrics(after);
}
