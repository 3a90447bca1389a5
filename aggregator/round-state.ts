import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { meetsTarget } from '../shared/fl/schedule.js';
import type { EvalMetrics } from '../shared/protocol/messages.js';
import type { LayerMoments } from '../shared/fl/bn-statistics.js';

/**
 * The state of one round, as pure data and decisions (no I/O, no timers): who was selected,
 * who reported what, and whether the round can close and how. The aggregator service feeds it
 * events and carries out its decisions.
 *
 * A round closes as soon as every selected agent has either delivered a verified update or had
 * its update rejected (failures are data, as in Flower), or when its deadline passes. It is then
 * aggregated if at least `minClients` updates were accepted; otherwise the global model is kept.
 * With a target accuracy, a training round also closes early once every selected agent reported
 * that the base model already reaches the target on its local test split (the seed paper's
 * stopping rule): the base model is then the final one.
 * A statistics round closes when every selected agent sent its BN statistics, or at the deadline;
 * its statistics are pooled into a new version when at least `minClients` did.
 */

export type RoundKind = 'train' | 'evaluate' | 'statistics';

export interface RoundPlan {
  round: number;
  kind: RoundKind;
  baseVersion: number;
  selected: readonly string[];
  minClients: number;
  deadlineAt: number;
  startedAt: number;
  targetAccuracy: number | null;
}

export interface AcceptedUpdate {
  agent: string;
  sampleCount: number;
  bytes: number;
  sha256: string;
  metricsBefore: EvalMetrics | null;
  metricsAfter: EvalMetrics | null;
  trainMs: number;
  /** Optimizer steps the agent reported (update meta `steps`; SCAFFOLD). */
  steps?: number;
}

export interface Failure {
  agent: string;
  code: string;
  reason: string;
}

/** aggregate: enough updates, average them; keep: too few, the global model stays; target-reached:
 * the base model already meets the target; evaluated: an evaluation-only round is done. */
export type RoundOutcome = 'aggregate' | 'keep' | 'target-reached' | 'evaluated';

export type CloseDecision = { close: false } | { close: true; outcome: RoundOutcome; reason: string };

/** Whether the base model meets the target on the selected agents' test splits (the strategy's evaluate step). */
type TargetRule = (metrics: Readonly<Record<string, EvalMetrics | undefined>>, selected: readonly string[], target: number | null) => boolean;

export class RoundState {
  readonly plan: RoundPlan;
  private readonly targetRule: TargetRule;
  private readonly evals = new Map<string, EvalMetrics>();
  private readonly accepted = new Map<string, AcceptedUpdate>();
  private readonly failures = new Map<string, Failure>();
  private readonly statistics = new Map<string, LayerMoments[]>();
  /** `plan.selected` as a set: every message of the round asks whether its sender was selected. */
  private readonly selectedSet: ReadonlySet<string>;
  /**
   * The evaluations as the target rule takes them, kept up to date by recordEval instead of built
   * per decide(): decide() runs after every verdict and report, and a record of N sites built
   * each time was O(N^2) garbage per round (60 MiB of the aggregator's 456 MiB of JavaScript
   * allocations in a 300-site round, docs/scaling.md).
   */
  private readonly evalRecord: Record<string, EvalMetrics> = Object.create(null) as Record<string, EvalMetrics>;
  /** The target rule's verdict on the evaluations as they are; null when one arrived since. */
  private targetVerdict: boolean | null = null;
  private closedFlag = false;

  constructor(plan: RoundPlan, targetRule: TargetRule = meetsTarget) {
    if (plan.selected.length === 0) throw new RangeError(`round ${plan.round}: no agent selected`);
    this.plan = { ...plan, selected: [...plan.selected].sort() };
    this.selectedSet = new Set(this.plan.selected);
    this.targetRule = targetRule;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  isSelected(agent: string): boolean {
    return this.selectedSet.has(agent);
  }

  /** Record the base model's metrics on an agent's local test split. Returns false if already known. */
  recordEval(agent: string, metrics: EvalMetrics): boolean {
    if (this.evals.has(agent)) return false;
    this.evals.set(agent, metrics);
    this.evalRecord[agent] = metrics;
    this.targetVerdict = null;
    return true;
  }

  /** Record an agent's BN statistics (statistics rounds). Returns false if already known. */
  recordStatistics(agent: string, moments: LayerMoments[]): boolean {
    if (this.statistics.has(agent)) return false;
    this.statistics.set(agent, moments);
    return true;
  }

  /** Every agent's BN statistics, in agent id order (the pooling order). */
  statisticsByAgent(): [string, LayerMoments[]][] {
    return [...this.statistics.entries()].sort(([a], [b]) => a.localeCompare(b));
  }

  hasAccepted(agent: string): boolean {
    return this.accepted.has(agent);
  }

  acceptedUpdate(agent: string): AcceptedUpdate | undefined {
    return this.accepted.get(agent);
  }

  recordAccepted(update: AcceptedUpdate): void {
    if (this.accepted.has(update.agent))
      throw new FedlineError(ErrorCodes.DUPLICATE_UPDATE, `round ${this.plan.round}: update of ${update.agent} accepted twice`);
    this.accepted.set(update.agent, update);
    this.failures.delete(update.agent);
  }

  recordFailure(failure: Failure): void {
    if (!this.accepted.has(failure.agent)) this.failures.set(failure.agent, failure);
  }

  /** An accepted update refused later (norm screening at close): it leaves the average. */
  recordFailureAfterAcceptance(failure: Failure): void {
    this.accepted.delete(failure.agent);
    this.failures.set(failure.agent, failure);
  }

  evalsByAgent(): Record<string, EvalMetrics> {
    return Object.fromEntries([...this.evals.entries()].sort(([a], [b]) => a.localeCompare(b)));
  }

  acceptedUpdates(): AcceptedUpdate[] {
    return [...this.accepted.values()].sort((a, b) => a.agent.localeCompare(b.agent));
  }

  failureList(): Failure[] {
    return [...this.failures.values()].sort((a, b) => a.agent.localeCompare(b.agent));
  }

  /** Whether the base model already meets the target on every selected agent's test split. */
  targetReached(): boolean {
    // The rule is pure: its verdict changes only when an evaluation arrives.
    this.targetVerdict ??= this.targetRule(this.evalRecord, this.plan.selected, this.plan.targetAccuracy);
    return this.targetVerdict;
  }

  /** Selected agents with an accepted update or a failure, counted without building a list (decide() runs after every event). */
  private answeredCount(): number {
    let answered = 0;
    for (const a of this.accepted.keys()) if (this.selectedSet.has(a)) answered++;
    for (const a of this.failures.keys()) if (this.selectedSet.has(a) && !this.accepted.has(a)) answered++;
    return answered;
  }

  /** What to do now, given the clock. Pure: call it after every event and on the deadline. */
  decide(now: number): CloseDecision {
    if (this.closedFlag) return { close: false };
    const { selected, kind, minClients, deadlineAt } = this.plan;
    const pastDeadline = now >= deadlineAt;
    if (kind === 'evaluate') {
      if (selected.every((a) => this.evals.has(a))) return { close: true, outcome: 'evaluated', reason: 'all selected agents reported' };
      if (pastDeadline) return { close: true, outcome: 'evaluated', reason: `deadline passed with ${this.evals.size} of ${selected.length} reports` };
      return { close: false };
    }
    if (kind === 'statistics') {
      const got = this.statistics.size;
      if (got < selected.length && !pastDeadline) return { close: false };
      const why = got === selected.length ? 'every selected agent sent its statistics' : `deadline passed with ${got} of ${selected.length} statistics`;
      if (got >= minClients) return { close: true, outcome: 'aggregate', reason: why };
      return { close: true, outcome: 'keep', reason: `${why}, ${minClients} needed; the version keeps its averaged statistics` };
    }
    if (this.targetReached())
      return { close: true, outcome: 'target-reached', reason: `base model reaches ${this.plan.targetAccuracy} on every agent's local test split` };
    const answered = this.answeredCount();
    if (answered === selected.length || pastDeadline) {
      const why = answered === selected.length ? 'every selected agent answered' : 'deadline passed';
      if (this.accepted.size >= minClients) {
        return { close: true, outcome: 'aggregate', reason: `${why}: ${this.accepted.size} of ${selected.length} updates accepted` };
      }
      return {
        close: true,
        outcome: 'keep',
        reason: `${why}: ${this.accepted.size} of ${selected.length} updates accepted, ${minClients} needed; the global model stays as it was`,
      };
    }
    return { close: false };
  }

  markClosed(): void {
    this.closedFlag = true;
  }
}
