import { scaffoldServerStreamed, type ScaffoldReader } from '../shared/fl/scaffold.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { FedAvg } from './fedavg-strategy.js';
import { ServerStateFiles } from './server-state.js';
import type { Failure } from './round-state.js';
import type { ControlVariate, EvaluateInput, RoundConfig, RoundSetup, Strategy, StrategyInput, StrategyOutput } from './strategy.js';

/** The state file's one slot: the server variate c. */
const SLOT = 'c';

/**
 * SCAFFOLD (Karimireddy et al. 2020, option II; the math in shared/fl/scaffold.ts). Rounds are
 * configured as FedAvg's with `scaffold: true` in the task, which makes the agents correct every
 * local step by -η_l (c - c_i) (training/tfjs-trainer.ts) and report the optimizer steps they took.
 * The server variate c (float32 per federated weight) lives in <stateDir>/scaffold/, one file per
 * model version, written and fsynced before the version commits (aggregator/server-state.ts), so a
 * restarted aggregator continues with the same bits; the round runner publishes it to the agents
 * with the next round (controlVariate). The server learning rate η_g is serverOptimizer.learningRate
 * (null: 1, which makes the new weights FedAvg's average of the corrected local models).
 */
export class Scaffold implements Strategy {
  readonly name = 'scaffold';
  private readonly fedAvg: FedAvg;
  private readonly files: ServerStateFiles;
  private readonly globalLearningRate: number;
  private readonly clients: number;
  /** The local learning rate each round announced (the schedule's), by round: Δc_i divides by it. */
  private readonly localLearningRates = new Map<number, number>();

  constructor(config: Readonly<Pick<AggregatorConfig, 'task' | 'stateDir' | 'serverOptimizer' | 'agents'>>) {
    this.fedAvg = new FedAvg(config.task);
    this.files = new ServerStateFiles(config.stateDir, 'scaffold');
    this.globalLearningRate = config.serverOptimizer.learningRate ?? 1;
    this.clients = config.agents.length;
  }

  configureRound(setup: RoundSetup): RoundConfig {
    const config = this.fedAvg.configureRound(setup);
    // The completion announcement configures no agents: it must not change what a round announced.
    if (setup.available.length > 0) this.localLearningRates.set(setup.round, config.task.learningRate);
    return { ...config, task: { ...config.task, scaffold: true } };
  }

  evaluate(input: EvaluateInput): { targetReached: boolean } {
    return this.fedAvg.evaluate(input);
  }

  async aggregate({ round, federated, results, base, versions, output }: StrategyInput): Promise<StrategyOutput> {
    if (!versions) throw new RangeError("scaffold needs the round's model versions for its state");
    const localLearningRate = this.localLearningRates.get(round);
    if (localLearningRate === undefined) throw new RangeError(`scaffold: round ${round} was not configured by this strategy`);
    // An update without its step count (an agent that does not run SCAFFOLD) cannot give Δc_i: it leaves the average.
    const refused: Failure[] = results
      .filter((r) => !validSteps(r.steps))
      .map((r) => ({ agent: r.id, code: ErrorCodes.UPDATE_MANIFEST, reason: 'a scaffold round needs the number of local steps in the update (meta.steps)' }));
    const kept = results.filter((r): r is ScaffoldReader => validSteps(r.steps));
    if (kept.length === 0) return { kind: 'keep', reason: 'no results to aggregate', refused };
    const tensors = federated.map((t) => ({ name: t.name, length: elementCount(t.shape) }));
    const state = await this.files.open(versions.base, versions.next, { slots: [SLOT], tensors });
    try {
      const io = {
        read: state.read ? (name: string, start: number, out: Float32Array) => state.read!(SLOT, name, start, out) : null,
        write: (name: string, start: number, values: Float32Array) => state.write(SLOT, name, start, values),
      };
      const params = { globalLearningRate: this.globalLearningRate, localLearningRate, clients: Math.max(this.clients, kept.length) };
      await scaffoldServerStreamed(params, kept, base, tensors, io, output);
      await state.commit();
    } finally {
      await state.close();
    }
    return refused.length ? { kind: 'weights', refused } : { kind: 'weights' };
  }

  /** The server variate c that goes with model `version` (null: none yet, agents take c = 0). */
  async controlVariate(version: number, federated: readonly { name: string; length: number }[]): Promise<ControlVariate | null> {
    const values = await this.files.readSlot(version, SLOT, federated);
    return values ? { version, tensors: values } : null;
  }
}

function validSteps(steps: number | undefined): steps is number {
  return steps !== undefined && Number.isInteger(steps) && steps >= 1;
}
