import { trimmedMeanStreamed } from '../shared/fl/robust.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import type { Logger } from '../shared/util/logger.js';
import { FedAvg } from './fedavg-strategy.js';
import type { EvaluateInput, RoundConfig, RoundSetup, Strategy, StrategyInput, StrategyOutput } from './strategy.js';

/**
 * Coordinate-wise trimmed mean (Yin et al. 2018): for every weight, the largest and smallest
 * ceil(trimFraction x updates) values are cut and the rest averaged, unweighted, so neither an
 * extreme update nor an inflated sample count moves the model. Rounds are configured and
 * evaluated as FedAvg does.
 */
export class TrimmedMean implements Strategy {
  readonly name = 'trimmed-mean';
  private readonly fedAvg: FedAvg;
  private readonly trimFraction: number;
  private readonly log: Logger | undefined;

  constructor(task: Readonly<AggregatorConfig['task']>, trimFraction: number, log?: Logger) {
    this.fedAvg = new FedAvg(task);
    this.trimFraction = trimFraction;
    this.log = log;
  }

  configureRound(setup: RoundSetup): RoundConfig {
    return this.fedAvg.configureRound(setup);
  }

  evaluate(input: EvaluateInput): { targetReached: boolean } {
    return this.fedAvg.evaluate(input);
  }

  async aggregate({ round, federated, results, output }: StrategyInput): Promise<StrategyOutput> {
    if (results.length === 0) return { kind: 'keep', reason: 'no results to aggregate' };
    const tensors = federated.map((t) => ({ name: t.name, length: elementCount(t.shape) }));
    const { trimmed } = await trimmedMeanStreamed(results, tensors, output, this.trimFraction);
    this.log?.info({ round, updates: results.length, trimmedEachEnd: trimmed }, 'trimmed mean aggregated');
    return { kind: 'weights' };
  }
}
