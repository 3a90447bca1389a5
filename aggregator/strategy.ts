import { fedAvgStreamed, type BlockSink, type TensorBlockReader } from '../shared/fl/fedavg.js';
import { elementCount, type TensorSpec } from '../shared/bundle/tensor-bundle.js';
import type { Failure } from './round-state.js';

/**
 * Aggregation strategies behind one interface, as Flower's are: given the round's verified
 * results (and its failures, as data), return new weights for the federated tensors or decide
 * to keep the global model. Strategies never see MQTT or the file system: results come as
 * block readers and new weights leave through a block sink, so a strategy's memory need not grow
 * with the model's size or the number of clients.
 */
export interface StrategyInput {
  round: number;
  /** Layout of the federated tensors in the global model. */
  federated: readonly Pick<TensorSpec, 'name' | 'shape'>[];
  results: readonly TensorBlockReader[];
  failures: readonly Failure[];
  /** Where new weights go: every federated tensor, in the order of `federated`, blocks ascending. */
  output: BlockSink;
}

export type StrategyOutput = { kind: 'weights' } | { kind: 'keep'; reason: string };

export interface Strategy {
  readonly name: string;
  aggregate(input: StrategyInput): Promise<StrategyOutput>;
}

/** FedAvg (McMahan et al. 2017): sample-weighted mean of the clients' weights. */
export class FedAvg implements Strategy {
  readonly name = 'fedavg';

  async aggregate({ federated, results, output }: StrategyInput): Promise<StrategyOutput> {
    if (results.length === 0) return { kind: 'keep', reason: 'no results to aggregate' };
    await fedAvgStreamed(
      results,
      federated.map((t) => ({ name: t.name, length: elementCount(t.shape) })),
      output,
    );
    return { kind: 'weights' };
  }
}
