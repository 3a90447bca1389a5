import type { z } from 'zod';
import type { roundRecordSchema } from '../shared/protocol/mes.js';
import type { AgentStatus, EvalMetrics, ModelManifest } from '../shared/protocol/messages.js';

type RoundRecord = z.infer<typeof roundRecordSchema>;

/**
 * What the dashboard knows of a federation, built only from what the broker delivers to its
 * `dashboard` role: agents' retained status, the events, the retained manifest. Pure: no I/O, the
 * caller passes each validated message and the time it arrived; `snapshot()` is what the page gets.
 */

export interface AgentView {
  agent: string;
  state: string;
  round: number | null;
  progress: number | null;
  detail: string | null;
  backend: string | null;
  samples: { train: number; test: number } | null;
  window: { state: string; detail: string } | null;
  lastSeen: number;
  /** Warnings and errors not cleared since (an `info` alert with the same code clears one). */
  alerts: AlertView[];
}

export interface AlertView {
  ts: number;
  severity: string;
  code: string;
  message: string;
  agent: string | null;
  round: number | null;
}

/** One agent in one round: the states it went through, and how long it spent waiting for its window or paused. */
export interface RoundAgentView {
  states: string[];
  waitedMs: number;
  pausedMs: number;
  trainMs: number | null;
  /** trained (its update was aggregated), evaluated (an evaluate round measured the model on it), failed (update rejected), missing (selected, nothing came). */
  result: 'trained' | 'evaluated' | 'failed' | 'missing' | 'open';
}

export interface RoundView {
  round: number;
  kind: string;
  baseVersion: number;
  selected: string[];
  startedAt: number;
  deadlineAt: number;
  closedAt: number | null;
  outcome: string | null;
  reason: string | null;
  newVersion: number | null;
  bytesUp: number | null;
  bytesDown: number | null;
  durationMs: number | null;
  aggregateMs: number | null;
  agents: Record<string, RoundAgentView>;
}

/** Quality of one global model version on one site's test split (the round that started from it measured it). */
export interface SitePoint {
  version: number;
  accuracy: number;
  balancedAccuracy: number;
  defectRecall: number | null;
}

export interface ModelView {
  version: number;
  round: number;
  sha256: string | null;
  bytes: number | null;
  contributors: Record<string, number>;
  signature: string | null;
  publishedAt: number;
  /** candidate (aggregated, not released), released, rolled-back, rejected; or latest when the federation has no release management. */
  stage: string;
  stageDetail: string | null;
}

export interface DashboardSnapshot {
  federation: string;
  federationState: string;
  finalVersion: number | null;
  releasedVersion: number | null;
  /** True once any release event arrived: stages are then candidate/released, else candidate/latest. */
  releaseManagement: boolean;
  agents: AgentView[];
  rounds: RoundView[];
  sites: Record<string, SitePoint[]>;
  models: ModelView[];
  alerts: AlertView[];
  commands: Record<string, unknown>[];
  defectClass: string;
  updatedAt: number;
}

const MAX_ROUNDS = 300;
const MAX_ALERTS = 50;
const MAX_COMMANDS = 20;
/** Events from the release management: the stage each one puts a version in. */
const RELEASE_EVENTS: Record<string, string> = {
  'model-validated': 'validated',
  'model-released': 'released',
  'model-rejected': 'rejected',
  'model-rolled-back': 'rolled-back',
};

export class FederationView {
  private readonly agents = new Map<string, AgentView>();
  private readonly rounds = new Map<number, RoundView>();
  private readonly sites = new Map<string, Map<number, SitePoint>>();
  private readonly models = new Map<number, ModelView>();
  private readonly alerts: AlertView[] = [];
  /** When each agent entered its current state. */
  private readonly stateSince = new Map<string, number>();
  private readonly commands: Record<string, unknown>[] = [];
  private federationState = 'unknown';
  private finalVersion: number | null = null;
  private releasedVersion: number | null = null;
  private releaseManagement = false;
  private updatedAt = 0;

  constructor(
    private readonly federation: string,
    private readonly defectClass: { index: number; name: string },
  ) {}

  onStatus(s: AgentStatus, now: number): void {
    const a = this.agent(s.agent, s.state === 'offline' ? s.ts : now);
    this.trackRoundState(a, s.state, s.round, now);
    Object.assign(a, {
      state: s.state,
      round: s.round,
      progress: s.progress,
      detail: s.detail,
      backend: s.backend ?? a.backend,
      samples: s.samples ?? a.samples,
      window: s.window ?? null,
    });
    this.touch(now);
  }

  onManifest(m: ModelManifest, now: number): void {
    const model = this.model(m.version, m.round, now);
    model.sha256 = m.sha256;
    model.bytes = m.bytes;
    model.signature = m.signature;
    if (Object.keys(model.contributors).length === 0) model.contributors = (m.metrics.contributors as Record<string, number> | undefined) ?? {};
    this.touch(now);
  }

  /** A validated MES event (shared/protocol/mes.ts), or a release-management event with a `version`. */
  onEvent(e: { type: string; ts: number } & Record<string, unknown>, now: number): void {
    const agentOf = typeof e.agent === 'string' ? e.agent : null;
    if (agentOf && this.agents.has(agentOf)) this.agents.get(agentOf)!.lastSeen = now;
    switch (e.type) {
      case 'round-started':
        this.onRoundStarted(e as unknown as RoundRecord, now);
        break;
      case 'round-completed':
        this.onRoundCompleted(e as unknown as RoundRecord);
        break;
      case 'model-published': {
        const m = this.model(e.version as number, e.round as number, e.ts);
        m.sha256 = e.sha256 as string;
        m.bytes = e.bytes as number;
        m.contributors = e.contributors as Record<string, number>;
        break;
      }
      case 'alert':
        this.onAlert(e);
        break;
      case 'federation-completed':
        this.federationState = 'complete';
        this.finalVersion = e.finalVersion as number;
        break;
      case 'command-result':
        this.commands.unshift({ ts: e.ts, verb: e.verb, status: e.status, detail: e.detail, by: e.by, requestId: e.requestId });
        this.commands.splice(MAX_COMMANDS);
        if (e.by === 'aggregator' && typeof e.federationState === 'string') this.federationState = e.federationState;
        break;
      default:
        if (e.type in RELEASE_EVENTS && typeof e.version === 'number') this.onRelease(e.type, e.version, e);
    }
    this.touch(now);
  }

  snapshot(): DashboardSnapshot {
    const sites: Record<string, SitePoint[]> = {};
    for (const [site, points] of [...this.sites].sort(([a], [b]) => a.localeCompare(b)))
      sites[site] = [...points.values()].sort((a, b) => a.version - b.version);
    return {
      federation: this.federation,
      federationState: this.federationState,
      finalVersion: this.finalVersion,
      releasedVersion: this.releasedVersion,
      releaseManagement: this.releaseManagement,
      agents: [...this.agents.values()].sort((a, b) => a.agent.localeCompare(b.agent)),
      rounds: [...this.rounds.values()].sort((a, b) => b.round - a.round),
      sites,
      models: [...this.models.values()].sort((a, b) => b.version - a.version).map((m) => ({ ...m, stage: this.stageOf(m) })),
      alerts: [...this.alerts],
      commands: [...this.commands],
      defectClass: this.defectClass.name,
      updatedAt: this.updatedAt,
    };
  }

  private touch(now: number): void {
    this.updatedAt = now;
  }

  private agent(id: string, now: number): AgentView {
    let a = this.agents.get(id);
    if (!a) {
      a = { agent: id, state: 'unknown', round: null, progress: null, detail: null, backend: null, samples: null, window: null, lastSeen: now, alerts: [] };
      this.agents.set(id, a);
    }
    a.lastSeen = Math.max(a.lastSeen, now);
    return a;
  }

  private model(version: number, round: number, now: number): ModelView {
    let m = this.models.get(version);
    if (!m) {
      m = { version, round, sha256: null, bytes: null, contributors: {}, signature: null, publishedAt: now, stage: 'candidate', stageDetail: null };
      this.models.set(version, m);
    }
    return m;
  }

  private stageOf(m: ModelView): string {
    if (this.releaseManagement) return m.stage;
    const latest = Math.max(...this.models.keys());
    return m.version === latest ? 'latest' : 'candidate';
  }

  private onRelease(type: string, version: number, e: Record<string, unknown>): void {
    this.releaseManagement = true;
    const m = this.model(version, typeof e.round === 'number' ? e.round : 0, e.ts as number);
    m.stageDetail = typeof e.reason === 'string' ? e.reason : typeof e.detail === 'string' ? e.detail : null;
    // model-rolled-back names the version released again (`version`) and the one rolled back (`from`);
    // model-released names the new released version (shared/protocol/mes.ts).
    if (type === 'model-released' || type === 'model-rolled-back') {
      for (const other of this.models.values()) if (other !== m && other.stage === 'released') other.stage = 'superseded';
      m.stage = 'released';
      this.releasedVersion = version;
      if (type === 'model-rolled-back' && typeof e.from === 'number') this.model(e.from, 0, e.ts as number).stage = 'rolled-back';
      return;
    }
    m.stage = RELEASE_EVENTS[type]!;
  }

  private onRoundStarted(e: RoundRecord, now: number): void {
    if (this.federationState === 'unknown' || this.federationState === 'stopped') this.federationState = 'running';
    const agents: Record<string, RoundAgentView> = {};
    for (const a of e.selected) agents[a] = { states: [], waitedMs: 0, pausedMs: 0, trainMs: null, result: 'open' };
    this.rounds.set(e.round, {
      round: e.round,
      kind: e.kind,
      baseVersion: e.baseVersion,
      selected: e.selected,
      startedAt: now,
      deadlineAt: e.deadlineAt,
      closedAt: null,
      outcome: null,
      reason: null,
      newVersion: null,
      bytesUp: null,
      bytesDown: null,
      durationMs: null,
      aggregateMs: null,
      agents,
    });
    for (const old of [...this.rounds.keys()].sort((a, b) => a - b).slice(0, -MAX_ROUNDS)) this.rounds.delete(old);
  }

  private onRoundCompleted(r: RoundRecord): void {
    const prev = this.rounds.get(r.round);
    const agents: Record<string, RoundAgentView> = prev?.agents ?? {};
    const failed = new Set(r.failures.map((f) => f.agent));
    for (const a of r.selected) {
      const v = (agents[a] ??= { states: [], waitedMs: 0, pausedMs: 0, trainMs: null, result: 'open' });
      v.trainMs = r.trainMs[a] ?? null;
      if (r.participants.includes(a)) v.result = 'trained';
      else if (failed.has(a)) v.result = 'failed';
      else v.result = r.kind === 'evaluate' && r.baseMetrics[a] ? 'evaluated' : 'missing';
    }
    this.rounds.set(r.round, {
      round: r.round,
      kind: r.kind,
      baseVersion: r.baseVersion,
      selected: r.selected,
      startedAt: r.startedAt,
      deadlineAt: r.deadlineAt,
      closedAt: r.closedAt,
      outcome: r.outcome,
      reason: r.reason,
      newVersion: r.newVersion,
      bytesUp: r.bytesUp,
      bytesDown: r.bytesDown,
      durationMs: r.durationMs,
      aggregateMs: r.aggregateMs,
      agents,
    });
    // The base model measured on each site: one point per site and model version.
    for (const [site, m] of Object.entries(r.baseMetrics)) this.sitePoint(site, r.baseVersion, m);
  }

  private sitePoint(site: string, version: number, m: EvalMetrics): void {
    let points = this.sites.get(site);
    if (!points) this.sites.set(site, (points = new Map()));
    const recall = m.recall?.[this.defectClass.index];
    points.set(version, {
      version,
      accuracy: m.accuracy,
      balancedAccuracy: m.balancedAccuracy ?? m.accuracy,
      defectRecall: typeof recall === 'number' ? recall : null,
    });
  }

  private onAlert(e: Record<string, unknown>): void {
    const alert: AlertView = {
      ts: e.ts as number,
      severity: e.severity as string,
      code: e.code as string,
      message: e.message as string,
      agent: typeof e.agent === 'string' ? e.agent : null,
      round: typeof e.round === 'number' ? e.round : null,
    };
    this.alerts.unshift(alert);
    this.alerts.splice(MAX_ALERTS);
    if (!alert.agent) return;
    const a = this.agent(alert.agent, alert.ts);
    a.alerts = a.alerts.filter((x) => x.code !== alert.code);
    if (alert.severity !== 'info') a.alerts.push(alert);
  }

  /** Per round and agent: the states seen, and the time spent waiting for the window or paused. */
  private trackRoundState(a: AgentView, state: string, round: number | null, now: number): void {
    const prevRound = a.round !== null ? this.rounds.get(a.round)?.agents[a.agent] : undefined;
    const since = this.stateSince.get(a.agent) ?? now;
    if (prevRound && a.state === 'waiting-window') prevRound.waitedMs += now - since;
    if (prevRound && a.state === 'paused') prevRound.pausedMs += now - since;
    this.stateSince.set(a.agent, now);
    if (round === null) return;
    const v = this.rounds.get(round)?.agents[a.agent];
    if (v && !v.states.includes(state) && state !== 'idle') v.states.push(state);
  }
}
