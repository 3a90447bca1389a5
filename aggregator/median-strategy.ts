import { medianStreamed } from '../shared/fl/robust.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import { FedAvg } from './fedavg-strategy.js';
import type { EvaluateInput, RoundConfig, RoundSetup, Strategy, StrategyInput, StrategyOutput } from './strategy.js';

/**
 * Coordinate-wise median (Yin et al. 2018): every weight is the median of the updates' values
 * (the mean of the two middle ones for an even count), unweighted: fewer than half the sites
 * cannot move it past the honest values. Rounds are configured and evaluated as FedAvg does.
 */
export class Median implements Strategy {
  readonly name = 'median';
  private readonly fedAvg: FedAvg;

  constructor(task: Readonly<AggregatorConfig['task']>) {
    this.fedAvg = new FedAvg(task);
  }

  configureRound(setup: RoundSetup): RoundConfig {
    return this.fedAvg.configureRound(setup);
  }

  evaluate(input: EvaluateInput): { targetReached: boolean } {
    return this.fedAvg.evaluate(input);
  }

  async aggregate({ federated, results, output }: StrategyInput): Promise<StrategyOutput> {
    if (results.length === 0) return { kind: 'keep', reason: 'no results to aggregate' };
    await medianStreamed(
      results,
      federated.map((t) => ({ name: t.name, length: elementCount(t.shape) })),
      output,
    );
    return { kind: 'weights' };
  }
}
