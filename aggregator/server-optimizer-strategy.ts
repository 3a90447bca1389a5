import { serverOptimizerStreamed, stateSlots, type ServerOptimizerKind, type ServerOptimizerParams } from '../shared/fl/server-optimizer.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import { FedAvg } from './fedavg-strategy.js';
import { ServerStateFiles } from './server-state.js';
import type { EvaluateInput, RoundConfig, RoundSetup, Strategy, StrategyInput, StrategyOutput } from './strategy.js';

/**
 * Server optimizers on the pseudo-gradient (shared/fl/server-optimizer.ts): fedavgm (server
 * momentum, Hsu et al. 2019), fedadam and fedyogi (Reddi et al. 2021, Algorithm 2). Rounds are
 * configured and evaluated as FedAvg does; the state (m, and v for adam/yogi, float32 per federated
 * weight) lives in <stateDir>/server-optimizer/, one file per model version (aggregator/server-state.ts).
 */
export class ServerOptimizer implements Strategy {
  readonly name: ServerOptimizerKind;
  private readonly fedAvg: FedAvg;
  private readonly params: ServerOptimizerParams;
  private readonly files: ServerStateFiles;

  constructor(kind: ServerOptimizerKind, config: Readonly<Pick<AggregatorConfig, 'task' | 'stateDir' | 'serverOptimizer'>>) {
    this.name = kind;
    this.fedAvg = new FedAvg(config.task);
    this.params = serverOptimizerParams(kind, config.serverOptimizer);
    this.files = new ServerStateFiles(config.stateDir);
  }

  configureRound(setup: RoundSetup): RoundConfig {
    return this.fedAvg.configureRound(setup);
  }

  evaluate(input: EvaluateInput): { targetReached: boolean } {
    return this.fedAvg.evaluate(input);
  }

  async aggregate({ federated, results, base, versions, output }: StrategyInput): Promise<StrategyOutput> {
    if (results.length === 0) return { kind: 'keep', reason: 'no results to aggregate' };
    if (!versions) throw new RangeError(`${this.name} needs the round's model versions for its state`);
    const tensors = federated.map((t) => ({ name: t.name, length: elementCount(t.shape) }));
    const state = await this.files.open(versions.base, versions.next, { slots: stateSlots(this.params.kind), tensors });
    try {
      await serverOptimizerStreamed(this.params, results, base, tensors, state, output);
      await state.commit();
    } finally {
      await state.close();
    }
    return { kind: 'weights' };
  }
}

/** The configured parameters, each null one replaced by the kind's default (docs/how-it-works.md, Aggregation). */
export function serverOptimizerParams(kind: ServerOptimizerKind, config: Readonly<AggregatorConfig['serverOptimizer']>): ServerOptimizerParams {
  return {
    kind,
    learningRate: config.learningRate ?? (kind === 'fedavgm' ? 1 : 0.01),
    beta1: config.beta1,
    beta2: config.beta2,
    tau: config.tau,
  };
}
