import { elementCount } from '../shared/bundle/tensor-bundle.js';
import { resolveFederated } from '../shared/fl/federated-set.js';
import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { PROTOCOL_VERSION, type RoundAnnouncement, type TrainTask } from '../shared/protocol/messages.js';
import type { AggregatorContext } from './aggregator-context.js';
import { openActiveRound, type ActiveRound } from './active-round.js';
import type { MesCommands } from './mes-commands.js';
import type { ModelPublisher } from './model-publisher.js';
import type { StoredModel } from './model-store.js';
import { aggregateInMemory, aggregateRound } from './round-aggregation.js';
import { storePooledStatistics } from './statistics-round.js';
import type { ReleaseManager } from './release-manager.js';
import type { RoundJournal, RoundRecord } from './round-journal.js';
import { clipSampleCounts } from './sample-clip.js';
import { RoundState, type CloseDecision, type RoundKind, type RoundOutcome } from './round-state.js';
import type { AgentPresence } from './status-handler.js';
import type { Strategy } from './strategy.js';
import { creditChunksPerSender, recordRefusal } from './upload-collector.js';
import type { SpooledUpdate } from './update-spool.js';

export interface RoundRunnerDeps {
  ctx: AggregatorContext;
  journal: RoundJournal;
  presence: AgentPresence;
  commands: MesCommands;
  publisher: ModelPublisher;
  /** Model release: new versions are candidates, decided on when the sites have evaluated them. */
  release: ReleaseManager;
  strategy: Strategy;
  /** Settles when the aggregator stops. */
  stopSignal: Promise<void>;
  isStopped: () => boolean;
}

/** A round driven from outside (Aggregator.runDrivenRound, a plant under headquarters): its task is given, its aggregate stays in memory. */
export interface RoundDrive {
  /** The task to announce (a training round's is the upstream round's); absent: the strategy's. */
  task?: TrainTask;
  /** Aborted when the upstream round ends first: the open round closes without aggregation. */
  signal: AbortSignal;
  /** Set when the round aggregated: the federated tensors and the sample counts that weighed in (after clipping). */
  result?: { tensors: Map<string, Float32Array>; sampleCounts: Record<string, number> };
}

/**
 * One round from start to end: wait for the agents and the MES, open it (announce, start the
 * deadline), let the inbound handlers fill it, close it when RoundState decides so, aggregate
 * through the strategy, store and publish the new model, and journal the round.
 *
 * Over 400 lines: a round ends in one of three ways that share the round's state, journal and
 * refusal bookkeeping: a new stored version (aggregate), an aggregate kept in memory for a plant's
 * upstream update (aggregateDriven), or pooled BN statistics (poolStatistics). They stay methods
 * here so that the open/close/journal sequence reads in one place; if a fourth ending comes, move
 * the three into their own module behind one "finish the round" interface.
 */
export class RoundRunner {
  /** The current global model (set before the first round). */
  global: StoredModel | null = null;
  private readonly d: RoundRunnerDeps;
  private active: ActiveRound | null = null;

  constructor(deps: RoundRunnerDeps) {
    this.d = deps;
  }

  /** The open round, if any (the inbound handlers work on it). */
  current(): ActiveRound | null {
    return this.active;
  }

  /** Close the open round now, without aggregation (stop command, shutdown). */
  closeOpenRound(reason: string): void {
    this.active?.closing.resolve({ close: true, outcome: 'keep', reason });
  }

  async runRound(kind: RoundKind, resume?: RoundRecord, drive?: RoundDrive): Promise<RoundOutcome> {
    const { ctx, journal } = this.d;
    const roundNo = resume?.round ?? (journal.data.rounds.at(-1)?.round ?? 0) + 1;
    const selected = resume?.selected ?? (await this.selectAgents(roundNo, kind, drive?.signal));
    if (this.d.isStopped() || drive?.signal.aborted || !selected) return 'keep';
    const { active, task } = await this.openRound(kind, roundNo, selected, resume, drive);
    const { state, record } = active;
    const log = ctx.log.child({ round: roundNo });
    const deadlineTimer = ctx.clock.setTimeout(() => active.checkClose(), Math.max(0, record.deadlineAt - ctx.clock.now()) + 5);
    const control = await this.publishControl(active, task);
    await this.d.publisher.announce(this.announcement(active, task, 'open', control));
    ctx.emitEvent('round-started', {
      round: roundNo,
      kind,
      baseVersion: active.base.version,
      selected: state.plan.selected,
      deadlineAt: record.deadlineAt,
      resumed: Boolean(resume),
    });
    log.info({ kind, baseVersion: active.base.version, selected: state.plan.selected, deadlineAt: new Date(record.deadlineAt).toISOString() }, 'round started');
    active.checkClose();
    const onAbort = () => this.closeOpenRound(`upstream round ended: ${describeError(drive?.signal.reason).message}`);
    drive?.signal.addEventListener('abort', onAbort, { once: true });
    if (drive?.signal.aborted) onAbort();

    const decision = await active.closing.promise;
    drive?.signal.removeEventListener('abort', onAbort);
    state.markClosed();
    ctx.clock.clearTimeout(deadlineTimer);
    active.uploads.discardAll();
    if (!decision.close) throw new FedlineError(ErrorCodes.ABORTED, `round ${roundNo} ended without a decision to close it`);
    await this.d.publisher.announce(this.announcement(active, task, 'closed', control));
    this.recordClose(active, decision);
    // The sites' evaluations go into the base version's meta.json once, now, in one write (they
    // were one read-modify-write of a file growing with the sites per batch of reports: docs/scaling.md).
    await Promise.all(
      Object.entries(record.baseMetrics).map(([agent, m]) =>
        ctx.store.recordMetrics(active.base.version, agent, m).catch((err: Error) => log.warn({ err: err.message }, 'could not record metrics')),
      ),
    );
    // The round's base was evaluated by the sites at its start: the release gates decide on it.
    await this.d.release.onBaseEvaluated(active.base, record.baseMetrics);
    if (decision.outcome === 'aggregate' && !this.d.isStopped())
      await (kind === 'statistics' ? this.poolStatistics(active) : drive ? this.aggregateDriven(active, drive) : this.aggregate(active));
    else if (decision.outcome === 'keep') {
      ctx.emitEvent('alert', { severity: 'warning', code: 'FL_ROUND_KEPT', message: `round ${roundNo}: ${decision.reason}` });
      log.warn({ reason: decision.reason }, 'round closed without aggregation; global model kept');
    }
    record.durationMs = ctx.clock.now() - record.startedAt;
    this.active = null;
    if (record.kind === 'train') journal.data.trainRoundsDone++;
    await journal.spillOldRounds();
    await journal.save();
    await ctx.spool.dropRound(roundNo);
    ctx.emitEvent('round-completed', { ...record });
    log.info(
      { outcome: record.outcome, participants: record.participants, newVersion: record.newVersion, durationMs: record.durationMs, bytesUp: record.bytesUp },
      'round completed',
    );
    return record.outcome!;
  }

  /** The round announcement after the last round: the federation is complete, the final model is `global`. */
  completionAnnouncement(): RoundAnnouncement {
    const { config, clock } = this.d.ctx;
    const last = this.d.journal.data.rounds.at(-1);
    const kind = last?.kind ?? 'evaluate';
    const round = last?.round ?? 0;
    return {
      v: PROTOCOL_VERSION,
      type: 'round',
      federation: config.federation,
      runId: this.d.journal.data.runId,
      round,
      state: 'complete',
      kind,
      base: this.d.publisher.modelRef(this.global!),
      task: this.d.strategy.configureRound({ round, kind, available: [], trainRoundsBefore: this.d.journal.data.trainRoundsDone }).task,
      classes: [...this.global!.classes],
      selected: [],
      minClients: config.minClients,
      deadlineAt: clock.now(),
      chunkBytes: config.chunkBytes,
      encoding: config.encoding,
      delta: config.delta,
      windowChunks: 0,
      issuedAt: clock.now(),
    };
  }

  /** Who takes part in a new round (the strategy picks from the agents online); null when stopped. */
  private async selectAgents(roundNo: number, kind: RoundKind, upstream?: AbortSignal): Promise<readonly string[] | null> {
    const { commands, ctx, strategy, journal } = this.d;
    for (;;) {
      // Paused or stopped by the MES: no new round until resume / start.
      const until = upstream
        ? Promise.race([this.d.stopSignal, new Promise<void>((resolve) => upstream.addEventListener('abort', () => resolve(), { once: true }))])
        : this.d.stopSignal;
      await commands.waitUntilRunning(until, (state) => ctx.log.info({ state, round: roundNo }, `federation ${state} by MES command; round ${roundNo} waits`));
      if (this.d.isStopped() || upstream?.aborted) return null;
      const online = await this.waitForAgents(upstream);
      if (upstream?.aborted) return null;
      if (commands.state === 'running')
        return strategy.configureRound({ round: roundNo, kind, available: online, trainRoundsBefore: journal.data.trainRoundsDone }).selected;
    }
  }

  /** The round's state and journal record (a resumed round keeps its record), with the updates spooled before a restart. */
  private async openRound(
    kind: RoundKind,
    roundNo: number,
    selected: readonly string[],
    resume?: RoundRecord,
    drive?: RoundDrive,
  ): Promise<{ active: ActiveRound; task: TrainTask }> {
    const { ctx, journal, strategy } = this.d;
    const { config, clock } = ctx;
    const base = this.global!;
    const now = clock.now();
    const deadlineAt = resume && resume.deadlineAt > now ? resume.deadlineAt : now + config.roundDeadlineMs;
    const targetAccuracy = kind === 'train' ? config.targetAccuracy : null;
    const plan = {
      round: roundNo,
      kind,
      baseVersion: base.version,
      selected,
      minClients: config.minClients,
      deadlineAt,
      startedAt: resume?.startedAt ?? now,
      targetAccuracy,
    };
    const state = new RoundState(plan, (metrics, sites, target) => strategy.evaluate({ metrics, selected: sites, targetAccuracy: target }).targetReached);
    const record: RoundRecord = resume ?? newRecord(state, now);
    record.deadlineAt = deadlineAt;
    record.encoding = config.encoding;
    record.delta = config.delta;
    record.acceptedAt ??= {};
    const federatedNames = resolveFederated(
      drive?.task?.federated ?? config.task.federated,
      base.tensors.map((t) => t.name),
      base.headTensors,
    );
    const active = openActiveRound(ctx, { state, record, base, federatedNames });
    // Updates verified before a restart are on disk: take them back without asking agents again.
    ctx.spool.ensureRound(roundNo);
    for (const u of await ctx.spool.list(roundNo, ctx.log)) {
      if (state.isSelected(u.agent) && !state.hasAccepted(u.agent)) {
        state.recordAccepted(u);
        ctx.log.info({ round: roundNo, agent: u.agent }, 'update restored from spool');
      }
    }
    // Evaluations received before a restart are in the spool (the journal has them only once the round closed).
    for (const [agent, e] of resume ? await ctx.spool.listEvals(roundNo, ctx.log) : []) {
      if (!state.isSelected(agent) || agent in record.baseMetrics) continue;
      record.baseMetrics[agent] = e.metrics;
      record.bytesDown += e.downloadedBytes;
    }
    for (const [agent, metrics] of Object.entries(record.baseMetrics)) state.recordEval(agent, metrics);
    // Statistics received before a restart, likewise.
    for (const [agent, moments] of await ctx.spool.listStatistics(roundNo)) if (state.isSelected(agent)) state.recordStatistics(agent, moments);
    if (!resume) journal.data.rounds.push(record);
    await journal.save();
    this.active = active;
    // stop() closes the open round; one that came during the awaits above found none to close,
    // and the round would have waited for its deadline (seen as a flaky restart test).
    if (this.d.isStopped()) this.closeOpenRound('aggregator stopping');
    // A resumed round keeps the agents it had; the strategy still sets the task it announces.
    const { task } = strategy.configureRound({ round: roundNo, kind, available: state.plan.selected, trainRoundsBefore: journal.data.trainRoundsDone });
    return { active, task: drive?.task ?? task };
  }

  /** The round's results as the journal keeps them. */
  private recordClose(active: ActiveRound, decision: CloseDecision & { close: true }): void {
    const { state, record } = active;
    record.closedAt = this.d.ctx.clock.now();
    record.outcome = decision.outcome;
    record.reason = decision.reason;
    record.baseMetrics = state.evalsByAgent();
    const accepted = state.acceptedUpdates();
    record.participants = accepted.map((u) => u.agent);
    record.sampleCounts = Object.fromEntries(accepted.map((u) => [u.agent, u.sampleCount]));
    record.localMetrics = Object.fromEntries(accepted.map((u) => [u.agent, u.metricsAfter]));
    record.trainMs = Object.fromEntries(accepted.map((u) => [u.agent, u.trainMs]));
    record.failures = state.failureList();
  }

  /** Aggregate the accepted updates through the strategy; store and publish the new model, or keep the old one. */
  private async aggregate(active: ActiveRound): Promise<void> {
    const { ctx, journal, publisher, strategy } = this.d;
    const { state, record } = active;
    const roundNo = state.plan.round;
    const accepted = clipSampleCounts(ctx, roundNo, state.acceptedUpdates() as SpooledUpdate[]);
    const started = ctx.clock.now();
    try {
      const result = await aggregateRound(ctx, strategy, active, accepted);
      this.recordRefused(active, result.output.refused ?? []);
      if (result.stored) {
        await publisher.publishModel(result.stored);
        await this.d.release.onNewVersion(result.stored);
        record.modelPublishedAt = ctx.clock.now();
        record.newVersion = result.stored.version;
        this.global = result.stored;
        journal.data.currentVersion = result.stored.version;
      } else {
        const { reason } = result.output;
        ctx.log.warn({ reason }, 'strategy kept the global model');
        record.outcome = 'keep';
        record.reason = reason;
        ctx.emitEvent('alert', { severity: 'warning', code: 'FL_ROUND_KEPT', message: `round ${roundNo}: ${reason}` });
      }
    } catch (err) {
      const { code, message } = describeError(err);
      ctx.log.child({ round: roundNo }).error({ err: message, code }, 'aggregation failed; keeping the global model');
      ctx.emitEvent('alert', { severity: 'error', code, message: `round ${roundNo}: aggregation failed: ${message}` });
      record.outcome = 'keep';
      record.reason = `aggregation failed: ${message}`;
    }
    record.aggregateMs = ctx.clock.now() - started;
  }

  /** A driven round's aggregate, kept in memory for the caller (drive.result); the global model stays as it is. */
  private async aggregateDriven(active: ActiveRound, drive: RoundDrive): Promise<void> {
    const { ctx, strategy } = this.d;
    const { record } = active;
    const accepted = clipSampleCounts(ctx, active.state.plan.round, active.state.acceptedUpdates() as SpooledUpdate[]);
    const started = ctx.clock.now();
    try {
      const result = await aggregateInMemory(ctx, strategy, active, accepted);
      this.recordRefused(active, result.output.refused ?? []);
      if (result.tensors) {
        const kept = new Set(record.participants);
        drive.result = {
          tensors: result.tensors,
          sampleCounts: Object.fromEntries(accepted.filter((u) => kept.has(u.agent)).map((u) => [u.agent, u.sampleCount])),
        };
      } else {
        record.outcome = 'keep';
        record.reason = result.output.reason;
      }
    } catch (err) {
      const { code, message } = describeError(err);
      ctx.log.error({ round: record.round, err: message, code }, 'aggregation failed');
      record.outcome = 'keep';
      record.reason = `aggregation failed: ${message}`;
    }
    record.aggregateMs = ctx.clock.now() - started;
  }

  /** A statistics round: the agents' BN statistics pooled into the next version (same weights), stored and published. */
  private async poolStatistics(active: ActiveRound): Promise<void> {
    const { ctx, journal, publisher } = this.d;
    const { record, state } = active;
    const started = ctx.clock.now();
    record.participants = state.statisticsByAgent().map(([agent]) => agent);
    try {
      const stored = await storePooledStatistics(ctx, active);
      record.modelStoredAt = ctx.clock.now();
      await publisher.publishModel(stored);
      await this.d.release.onNewVersion(stored);
      record.modelPublishedAt = ctx.clock.now();
      record.newVersion = stored.version;
      this.global = stored;
      journal.data.currentVersion = stored.version;
    } catch (err) {
      const { code, message } = describeError(err);
      ctx.log.child({ round: state.plan.round }).error({ err: message, code }, 'pooling the statistics failed; the version keeps its averaged statistics');
      ctx.emitEvent('alert', { severity: 'error', code, message: `round ${state.plan.round}: pooling the statistics failed: ${message}` });
      record.outcome = 'keep';
      record.reason = `pooling the statistics failed: ${message}`;
    }
    record.aggregateMs = ctx.clock.now() - started;
  }

  /** Accepted updates the strategy refused (norm screening): failures of the round, with an alert each. */
  private recordRefused(active: ActiveRound, refused: readonly { agent: string; code: string; reason: string }[]): void {
    if (refused.length === 0) return;
    const { ctx } = this.d;
    const { state, record } = active;
    const round = state.plan.round;
    for (const f of refused) {
      ctx.counters.inc(f.code);
      const upload = (state.acceptedUpdate(f.agent) as SpooledUpdate | undefined)?.upload ?? null;
      state.recordFailureAfterAcceptance(f);
      recordRefusal(record, { agent: f.agent, upload, code: f.code, reason: f.reason, at: ctx.clock.now() }, ctx);
      ctx.log.warn({ round, agent: f.agent, code: f.code }, `update of ${f.agent} refused: ${f.reason}`);
      ctx.emitEvent('alert', { severity: 'warning', code: f.code, agent: f.agent, round, message: `update of ${f.agent} refused: ${f.reason}` });
    }
    const kept = state.acceptedUpdates();
    record.participants = kept.map((u) => u.agent);
    record.sampleCounts = Object.fromEntries(kept.map((u) => [u.agent, u.sampleCount]));
    record.failures = [...record.failures, ...state.failureList().filter((f) => !record.failures.some((g) => g.agent === f.agent))];
  }

  /** The member agents online, once all are or once waitForAgentsMs has passed with minClients; `upstream`: a driven round's end also ends the wait. */
  private async waitForAgents(upstream?: AbortSignal): Promise<string[]> {
    const { ctx, presence } = this.d;
    const { agents, minClients, waitForAgentsMs } = ctx.config;
    const started = ctx.clock.now();
    let warned = false;
    for (;;) {
      if (this.d.isStopped() || upstream?.aborted) return [];
      const online = agents.filter((a) => presence.isOnline(a));
      if (online.length === agents.length) return online;
      const waited = ctx.clock.now() - started;
      if (waited >= waitForAgentsMs && online.length >= minClients) {
        ctx.log.warn({ online, offline: agents.filter((a) => !presence.isOnline(a)) }, 'starting the round without the offline agents');
        return online;
      }
      if (waited >= waitForAgentsMs && !warned) {
        warned = true;
        const message = `only ${online.length} of ${agents.length} agents online, ${minClients} needed to start a round; waiting`;
        ctx.log.warn({ online }, message);
        ctx.emitEvent('alert', { severity: 'warning', code: 'FL_WAITING_FOR_AGENTS', message });
      }
      await presence.waitForChange(1000, this.d.stopSignal);
    }
  }

  /** SCAFFOLD rounds: publish the server variate c that goes with the round's base (none yet: c = 0, no `control`). */
  private async publishControl(active: ActiveRound, task: TrainTask): Promise<RoundAnnouncement['control']> {
    const { strategy, publisher } = this.d;
    if (!task.scaffold || !strategy.controlVariate || active.state.plan.kind !== 'train') return undefined;
    const specs = active.base.tensors.filter((t) => active.federatedNames.includes(t.name));
    const variate = await strategy.controlVariate(
      active.base.version,
      specs.map((t) => ({ name: t.name, length: elementCount(t.shape) })),
    );
    return variate ? publisher.publishControl(variate, specs) : undefined;
  }

  private announcement(active: ActiveRound, task: TrainTask, state: 'open' | 'closed', control: RoundAnnouncement['control']): RoundAnnouncement {
    const { config, clock } = this.d.ctx;
    const { plan } = active.state;
    return {
      v: PROTOCOL_VERSION,
      type: 'round',
      federation: config.federation,
      runId: this.d.journal.data.runId,
      round: plan.round,
      state,
      kind: plan.kind,
      base: this.d.publisher.modelRef(active.base),
      ...(control ? { control } : {}),
      task,
      classes: [...active.base.classes],
      selected: [...plan.selected],
      minClients: plan.minClients,
      deadlineAt: plan.deadlineAt,
      chunkBytes: config.chunkBytes,
      encoding: config.encoding,
      delta: config.delta,
      // Flow-control credit per selected sender (the protocol calls it windowChunks).
      windowChunks: creditChunksPerSender(config.windowChunks, plan.selected.length),
      issuedAt: clock.now(),
    };
  }
}

function newRecord(state: RoundState, now: number): RoundRecord {
  const { plan } = state;
  return {
    round: plan.round,
    kind: plan.kind,
    baseVersion: plan.baseVersion,
    selected: [...plan.selected],
    deadlineAt: plan.deadlineAt,
    startedAt: now,
    closedAt: null,
    outcome: null,
    reason: null,
    newVersion: null,
    participants: [],
    sampleCounts: {},
    baseMetrics: {},
    localMetrics: {},
    failures: [],
    refusals: [],
    trainMs: {},
    bytesUp: 0,
    bytesDown: 0,
    aggregateMs: null,
    durationMs: null,
  };
}
