import { fedAvgStreamed, type TensorBlockReader } from '../shared/fedavg.js';
import { elementCount, type TensorSpec } from '../shared/tensor-bundle.js';
import type { Failure } from './round-state.js';

/**
 * Aggregation strategies behind one interface, as Flower's are: given the round's verified
 * results (and its failures, as data), return new weights for the federated tensors or decide
 * to keep the global model. Strategies never see MQTT or the file system: results come as
 * block readers.
 */
export interface StrategyInput {
  round: number;
  /** Layout of the federated tensors in the global model. */
  federated: readonly Pick<TensorSpec, 'name' | 'shape'>[];
  results: readonly TensorBlockReader[];
  failures: readonly Failure[];
}

export type StrategyOutput = { kind: 'weights'; tensors: Map<string, Float32Array> } | { kind: 'keep'; reason: string };

export interface Strategy {
  readonly name: string;
  aggregate(input: StrategyInput): Promise<StrategyOutput>;
}

/** FedAvg (McMahan et al. 2017): sample-weighted mean of the clients' weights. */
export class FedAvg implements Strategy {
  readonly name = 'fedavg';

  async aggregate({ federated, results }: StrategyInput): Promise<StrategyOutput> {
    if (results.length === 0) return { kind: 'keep', reason: 'no results to aggregate' };
    const tensors = new Map<string, Float32Array>();
    for (const t of federated) tensors.set(t.name, new Float32Array(elementCount(t.shape)));
    await fedAvgStreamed(
      results,
      federated.map((t) => ({ name: t.name, length: elementCount(t.shape) })),
      (name) => tensors.get(name)!,
    );
    return { kind: 'weights', tensors };
  }
}
