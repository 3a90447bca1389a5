import { fedAvgStreamed } from '../shared/fl/fedavg.js';
import { meetsTarget, scheduledLearningRate } from '../shared/fl/schedule.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import type { TrainTask } from '../shared/protocol/messages.js';
import type { EvaluateInput, RoundConfig, RoundSetup, Strategy, StrategyInput, StrategyOutput } from './strategy.js';

/**
 * FedAvg (McMahan et al. 2017): every available agent takes part, the learning rate follows the
 * server-side schedule, the new weights are the sample-weighted mean of the clients' weights, and
 * the federation stops when the model meets the target on every selected agent's test split.
 */
export class FedAvg implements Strategy {
  readonly name = 'fedavg';
  private readonly task: Readonly<AggregatorConfig['task']>;

  constructor(task: Readonly<AggregatorConfig['task']>) {
    this.task = task;
  }

  configureRound({ available, trainRoundsBefore }: RoundSetup): RoundConfig {
    const { learningRateDecay, ...task } = this.task;
    return {
      selected: [...available],
      task: {
        ...task,
        learningRate: scheduledLearningRate(task.learningRate, learningRateDecay, trainRoundsBefore),
        // Announced, so that every site's status and log say how the round trains (docs/training.md).
        optimizerState: task.optimizerState ?? 'reset',
        federated: task.federated as TrainTask['federated'],
      },
    };
  }

  async aggregate({ federated, results, output }: StrategyInput): Promise<StrategyOutput> {
    if (results.length === 0) return { kind: 'keep', reason: 'no results to aggregate' };
    await fedAvgStreamed(
      results,
      federated.map((t) => ({ name: t.name, length: elementCount(t.shape) })),
      output,
    );
    return { kind: 'weights' };
  }

  evaluate({ metrics, selected, targetAccuracy }: EvaluateInput): { targetReached: boolean } {
    return { targetReached: meetsTarget(metrics, selected, targetAccuracy) };
  }
}
