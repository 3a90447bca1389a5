import { clippedFedAvgStreamed } from '../shared/fl/robust.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import type { Logger } from '../shared/util/logger.js';
import { FedAvg } from './fedavg-strategy.js';
import type { EvaluateInput, RoundConfig, RoundSetup, Strategy, StrategyInput, StrategyOutput } from './strategy.js';

/**
 * Norm-clipped FedAvg (Sun et al. 2019): each update's change w_k - w_base is scaled down to at
 * most the median change of the round before the sample-weighted average, so one update can move
 * the model no further than a typical one, whatever its norm (the norm screen refuses only changes
 * above maxUpdateNormRatio x the others'). Rounds are configured and evaluated as FedAvg does.
 */
export class ClippedFedAvg implements Strategy {
  readonly name = 'fedavg-clipped';
  private readonly fedAvg: FedAvg;
  private readonly log: Logger | undefined;

  constructor(task: Readonly<AggregatorConfig['task']>, log?: Logger) {
    this.fedAvg = new FedAvg(task);
    this.log = log;
  }

  configureRound(setup: RoundSetup): RoundConfig {
    return this.fedAvg.configureRound(setup);
  }

  evaluate(input: EvaluateInput): { targetReached: boolean } {
    return this.fedAvg.evaluate(input);
  }

  async aggregate({ round, federated, results, base, output }: StrategyInput): Promise<StrategyOutput> {
    if (results.length === 0) return { kind: 'keep', reason: 'no results to aggregate' };
    const tensors = federated.map((t) => ({ name: t.name, length: elementCount(t.shape) }));
    const { bound, scales, norms } = await clippedFedAvgStreamed(results, base, tensors, output);
    for (const [agent, scale] of scales) {
      if (scale < 1) this.log?.info({ round, agent, updateNorm: norms.get(agent), bound, scale }, 'update change clipped to the median change');
    }
    return { kind: 'weights' };
  }
}
