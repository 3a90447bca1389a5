import type { AggregatorConfig } from '../shared/config/service-config.js';
import { FedAvg } from './fedavg-strategy.js';
import type { EvaluateInput, RoundConfig, RoundSetup, Strategy, StrategyInput, StrategyOutput } from './strategy.js';

/**
 * FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): FedAvg aggregation,
 * and every round's task announces the proximal weight mu (the aggregator config's proxMu). The
 * agents add mu/2 ||w - w_global||² to their local loss (training/tfjs-trainer.ts), which keeps a
 * site with many images or unusual data from drifting far from the global model in one round.
 */
export class FedProx implements Strategy {
  readonly name = 'fedprox';
  private readonly fedAvg: FedAvg;
  private readonly mu: number;

  constructor(task: Readonly<AggregatorConfig['task']>, mu: number) {
    this.fedAvg = new FedAvg(task);
    this.mu = mu;
  }

  configureRound(setup: RoundSetup): RoundConfig {
    const config = this.fedAvg.configureRound(setup);
    return { ...config, task: { ...config.task, proxMu: this.mu } };
  }

  aggregate(input: StrategyInput): Promise<StrategyOutput> {
    return this.fedAvg.aggregate(input);
  }

  evaluate(input: EvaluateInput): { targetReached: boolean } {
    return this.fedAvg.evaluate(input);
  }
}
