import { deltaNorms } from '../shared/fl/fedavg.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import type { Failure } from './round-state.js';
import { screenUpdateNorms } from './robustness.js';
import type { EvaluateInput, RoundConfig, RoundSetup, Strategy, StrategyInput, StrategyOutput, ControlVariate } from './strategy.js';

export interface NormScreenOptions {
  /** Refuse an update whose change is above this many times the reference change (null: no ratio test). */
  maxNormRatio: number | null;
  /** Refuse an update whose change is above this L2 norm (null: no limit). */
  maxNorm: number | null;
  /** Each verdict is logged (debugging a false refusal needs the norms). */
  log?: Logger;
}

/**
 * A screening step any strategy can be wrapped in: updates that move the model far more than the
 * others (poisoned, scaled, diverged) are refused before the inner strategy aggregates. Each
 * update's change ||w_k - w_base|| is compared with the median change of the other updates
 * (aggregator/robustness.ts). Refused updates are returned as failures of the round; with fewer
 * than minClients left, the global model is kept.
 */
export class NormScreen implements Strategy {
  readonly name: string;
  private readonly inner: Strategy;
  private readonly options: NormScreenOptions;

  constructor(inner: Strategy, options: NormScreenOptions) {
    this.inner = inner;
    this.options = options;
    this.name = `norm-screen(${inner.name})`;
  }

  configureRound(setup: RoundSetup): RoundConfig {
    return this.inner.configureRound(setup);
  }

  evaluate(input: EvaluateInput): { targetReached: boolean } {
    return this.inner.evaluate(input);
  }

  /** The inner strategy's variate, if it has one (SCAFFOLD): the screen adds nothing to the downlink. */
  readonly controlVariate = (version: number, federated: readonly { name: string; length: number }[]): Promise<ControlVariate | null> =>
    this.inner.controlVariate ? this.inner.controlVariate(version, federated) : Promise.resolve(null);

  async aggregate(input: StrategyInput): Promise<StrategyOutput> {
    const { maxNormRatio, maxNorm, log } = this.options;
    const tensors = input.federated.map((t) => ({ name: t.name, length: elementCount(t.shape) }));
    const { norms, baseNorm } = await deltaNorms(input.results, input.base, tensors);
    const verdicts = screenUpdateNorms(norms, { maxNormRatio, maxNorm, baseNorm });
    const refused: Failure[] = [];
    for (const v of verdicts) {
      log?.info({ round: input.round, agent: v.agent, updateNorm: v.norm, referenceNorm: v.referenceNorm, accepted: v.accepted }, 'update norm screened');
      if (!v.accepted) refused.push({ agent: v.agent, code: ErrorCodes.UPDATE_NORM, reason: v.reason! });
    }
    const accepted = new Set(verdicts.filter((v) => v.accepted).map((v) => v.agent));
    const kept = input.results.filter((r) => accepted.has(r.id));
    if (kept.length < input.minClients) {
      const reason = `${input.results.length - kept.length} update(s) refused as outliers; ${kept.length} left, ${input.minClients} needed; the global model stays as it was`;
      return { kind: 'keep', reason, refused };
    }
    const out = await this.inner.aggregate({ ...input, results: kept, failures: [...input.failures, ...refused] });
    return { ...out, refused: [...refused, ...(out.refused ?? [])] };
  }
}
