import { EventEmitter } from 'node:events';
import { decodeMsgpack } from '../shared/protocol/wire-codec.js';
import type { AgentConfig } from '../shared/config/service-config.js';
import { Counters } from '../shared/util/counters.js';
import { describeError, ErrorCodes, FedlineError, isFedlineError } from '../shared/protocol/errors.js';
import { createEventPublisher, type EventSink } from '../shared/transport/event-publisher.js';
import type { Logger } from '../shared/util/logger.js';
import {
  roundAnnouncementSchema,
  SUPPORTED_VERSIONS,
  type AgentState,
  type AgentStatus,
  type EvalMetrics,
  type ModelMeta,
  type RoundAnnouncement,
} from '../shared/protocol/messages.js';
import { createTopics, defaultRoot, type Topics } from '../shared/protocol/topics.js';
import type { InboundMessage, Transport } from '../shared/transport/transport.js';
import { AgentStatusPublisher, type StatusPatch } from './agent-status.js';
import type { ModelVerifier } from './base-model.js';
import { trainLocalUpdate, type LocalUpdate } from './local-update.js';
import type { ModelCache } from './model-cache.js';
import { RoundBase } from './round-base.js';
import { publishBnStats, publishEvalReport } from './site-reports.js';
import { ScaffoldClient } from './scaffold-client.js';
import type { GlobalModel, ScaffoldControl, Trainer } from '../training/trainer.js';
import type { UpdateJournal } from './update-journal.js';
import { RunRounds } from './run-rounds.js';
import { TrainingWindow } from './training-window.js';
import type { GateSnapshot, TriggerGate } from './triggers/gate.js';
import type { SourceProblem } from './triggers/source.js';
import { sendUpdate } from './uplink.js';

type Config = Readonly<AgentConfig> | AgentConfig;

export interface AgentDeps {
  transport: Transport;
  cache: ModelCache;
  /** Prepares the local trainer once the federation's classes and input shape are known. */
  trainerFor: (model: ModelMeta) => Promise<Trainer>;
  /** Checks the aggregator's signature of a model (version, SHA-256); absent: models are not checked. */
  verifyModel?: ModelVerifier;
  /** Where sent updates are recorded, so a restart resumes instead of training again. */
  journal?: UpdateJournal;
  logger: Logger;
  /** When this box may train (edge-agent/triggers). Absent: always. */
  gate?: TriggerGate;
}

export interface RoundWorkResult {
  round: number;
  /** skipped: the training window did not open (or reopen) before the round's deadline. */
  outcome: 'accepted' | 'rejected' | 'evaluated' | 'statistics-sent' | 'aborted' | 'failed' | 'skipped';
  detail?: string;
  /** Update chunks sent again after the aggregator listed them missing (accepted or rejected uploads). */
  resentChunks?: number;
}

export { offlineStatus } from './agent-status.js';

/**
 * The edge agent: follows the retained round announcement; for each round it is selected for it
 * fetches the base model, evaluates it on the local test split (reported at once), trains, and
 * sends its update in chunks until the aggregator's verdict. A newer announcement, a closed
 * round or stop() aborts the work in progress at the next batch boundary.
 *
 * Over 400 lines: one class holds the per-round state every step touches (current work, abort
 * signal, counters, status). The round's steps live beside it: the base model and trainer (round-base.ts), status publishing
 * (agent-status.ts), local training (local-update.ts), the eval and statistics reports
 * (site-reports.ts), the upload (uplink.ts), run keys (run-rounds.ts).
 */
export class EdgeAgent extends EventEmitter {
  readonly counters = new Counters();
  private readonly config: Config;
  private readonly transport: Transport;
  private readonly journal: UpdateJournal | null;
  /** The announced base model, checked and fetched, and the local trainer. */
  private readonly base: RoundBase;
  /** SCAFFOLD's client variate c_i, kept in the state folder (edge-agent/scaffold-client.ts). */
  private readonly scaffold: ScaffoldClient;
  private readonly log: Logger;
  private readonly topics: Topics;
  private readonly emitEvent: EventSink;
  private readonly gate: TriggerGate | null;
  private readonly window: TrainingWindow | null;
  private current: { runId: string; round: number; controller: AbortController; done: Promise<RoundWorkResult> } | null = null;
  /** Rounds this agent is done with, keyed by (runId, round). */
  private readonly finishedRounds = new RunRounds();
  private readonly statusPublisher: AgentStatusPublisher;
  private stopped = false;
  private bytes = { up: 0, down: 0 };

  constructor(config: Config, deps: AgentDeps) {
    super();
    this.config = config;
    this.transport = deps.transport;
    this.journal = deps.journal ?? null;
    this.log = deps.logger.child({ module: 'agent', agent: config.agentId });
    this.topics = createTopics(config.topicRoot ?? defaultRoot(config.federation));
    this.base = new RoundBase({
      transport: deps.transport,
      topics: this.topics,
      cache: deps.cache,
      trainerFor: deps.trainerFor,
      verifyModel: deps.verifyModel ?? null,
      stateDir: config.stateDir ?? null,
      maxModelBytes: config.maxModelBytes,
      log: this.log,
    });
    this.scaffold = new ScaffoldClient(config.stateDir ?? null, this.log, { transport: this.transport, topics: this.topics });
    this.emitEvent = createEventPublisher(this.transport, this.topics, config.federation, this.log, undefined, config.agentId);
    this.gate = deps.gate ?? null;
    this.window = this.gate ? new TrainingWindow(this.gate) : null;
    this.statusPublisher = new AgentStatusPublisher(this.transport, this.topics.status(config.agentId), config.agentId, (status) => {
      this.emit('state', status);
      this.emitEvent('agent-state', { agent: config.agentId, state: status.state, round: status.round, progress: status.progress, detail: status.detail });
    });
  }

  get agentId(): string {
    return this.config.agentId;
  }

  get state(): AgentState {
    return this.statusPublisher.current.state;
  }

  /** The status last set (what `<root>/agent/<id>/status` carries, progress included). */
  get status(): AgentStatus {
    return this.statusPublisher.current;
  }

  /** Bytes of model downloaded and update chunks sent so far. */
  get transferred(): { up: number; down: number } {
    return { ...this.bytes };
  }

  async start(): Promise<void> {
    if (this.gate) {
      this.gate.on('change', this.onWindowChange);
      this.gate.on('problem', this.onWindowProblem);
      await this.gate.start();
    }
    await this.setStatus({ state: 'idle', detail: 'waiting for a round' }, true);
    await this.transport.subscribe(this.topics.round(), this.onRound);
    this.transport.on('connect', () => {
      // After a reconnect the retained status may be the broker's last will: say we are back.
      this.setStatus({}, true).catch(() => undefined);
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.transport.unsubscribe(this.topics.round(), this.onRound).catch(() => undefined);
    if (this.current) {
      this.current.controller.abort(new FedlineError(ErrorCodes.ABORTED, 'agent stopping'));
      await this.current.done.catch(() => undefined);
    }
    if (this.gate) {
      this.gate.off('change', this.onWindowChange);
      this.gate.off('problem', this.onWindowProblem);
      await this.gate.stop();
    }
  }

  /** The training window changed: say so in the status (the round work reacts through TrainingWindow). */
  private readonly onWindowChange = (snap: GateSnapshot): void => {
    if (this.stopped) return;
    const patch: StatusPatch = { window: { state: snap.state, detail: snap.detail } };
    if (this.statusPublisher.current.state === 'waiting-window') patch.detail = `training window ${snap.state}: ${snap.detail}`;
    this.setStatus(patch, true).catch(() => undefined);
  };

  /** A trigger source failed (OPC UA server unreachable, node missing, session lost) or recovered: alert the MES. */
  private readonly onWindowProblem = (p: SourceProblem): void => {
    if (this.stopped) return;
    if (!p.recovered) this.counters.inc(p.code);
    this.emitEvent('alert', {
      severity: p.recovered ? 'info' : 'warning',
      agent: this.config.agentId,
      code: p.code,
      message: p.message,
      ...(this.statusPublisher.current.round !== null ? { round: this.statusPublisher.current.round } : {}),
    });
  };

  /** Resolves when the work on the current round (if any) has ended. */
  async idle(): Promise<void> {
    while (this.current) await this.current.done.catch(() => undefined);
  }

  private readonly onRound = (m: InboundMessage): void => {
    if (this.stopped || m.payload.byteLength === 0) return;
    let ann: RoundAnnouncement;
    try {
      ann = decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round announcement' });
      if (ann.federation !== this.config.federation) throw new FedlineError(ErrorCodes.MSG_SCHEMA, `announcement for federation ${ann.federation}`);
    } catch (err) {
      this.reject(err, m.topic);
      return;
    }
    if (this.finishedRounds.isEarlierRun(ann)) {
      this.log.info({ runId: ann.runId, round: ann.round, state: ann.state }, 'announcement of an earlier federation run ignored');
      return;
    }
    const cur = this.current;
    const sameRun = !cur || cur.runId === ann.runId;
    if (ann.state === 'complete') {
      if (!sameRun) return; // another run's end does not end this run's work
      cur?.controller.abort(new FedlineError(ErrorCodes.ABORTED, 'federation complete'));
      this.log.info({ finalVersion: ann.base.version }, 'federation complete');
      this.setStatus({ state: 'idle', round: null, progress: null, detail: `federation complete; final model version ${ann.base.version}` }, true).catch(
        () => undefined,
      );
      this.emit('complete', ann);
      return;
    }
    if (ann.state === 'closed') {
      if (cur && cur.runId === ann.runId && cur.round === ann.round)
        cur.controller.abort(new FedlineError(ErrorCodes.ROUND_CLOSED, `round ${ann.round} closed`));
      this.finishedRounds.finish(ann);
      return;
    }
    if (cur && cur.runId === ann.runId && cur.round === ann.round) return; // the same announcement again (retained, reconnect)
    if (this.finishedRounds.isFinished(ann)) return;
    if (cur) cur.controller.abort(new FedlineError(ErrorCodes.ROUND_CLOSED, `round ${ann.round} replaces round ${cur.round}`));
    if (!ann.selected.includes(this.config.agentId)) {
      this.log.info({ round: ann.round }, 'not selected for this round');
      this.setStatus({ state: 'idle', round: ann.round, progress: null, detail: 'not selected for this round' }).catch(() => undefined);
      return;
    }
    const controller = new AbortController();
    const previous = cur?.done.catch(() => undefined) ?? Promise.resolve();
    const done = previous.then(() => this.work(ann, controller.signal));
    const entry = { runId: ann.runId, round: ann.round, controller, done };
    this.current = entry;
    done
      .then((result) => {
        this.emit('round-done', result);
      })
      .finally(() => {
        if (this.current === entry) this.current = null;
      });
  };

  private async work(ann: RoundAnnouncement, signal: AbortSignal): Promise<RoundWorkResult> {
    const round = ann.round;
    const log = this.log.child({ round });
    try {
      if (signal.aborted) throw signal.reason;
      // 1. the base model
      await this.setStatus({ state: 'downloading', round, progress: 0, detail: `model version ${ann.base.version}` }, true);
      const { model, downloadedBytes: modelBytes } = await this.fetchModel(ann, signal);
      const { control, downloadedBytes: controlBytes } = await this.scaffold.forRound(ann, model, {
        maxModelBytes: this.config.maxModelBytes,
        stallMs: 30_000,
        signal,
        onReject: (err, topic) => this.reject(err, topic),
      });
      this.bytes.down += controlBytes;
      const downloadedBytes = modelBytes + controlBytes;
      const trainer = await this.ensureTrainer(model.meta, ann);
      // The box's GPU serves the line first: evaluating and training wait for the training window.
      if (this.window) {
        await this.window.acquire(ann.deadlineAt, signal, (why) => {
          this.setStatus({ state: 'waiting-window', round, progress: null, detail: `training window closed: ${why}` }, true).catch(() => undefined);
        });
      }
      // A statistics round: the BN statistics of the new model over the training images, no evaluation, no training.
      if (ann.kind === 'statistics') return await this.sendStatistics(trainer, model, round, downloadedBytes, ann, log);
      // 2. evaluate the global model first, and report it at once (the seed paper's workflow)
      const metricsBefore = await this.evaluateAndReport(trainer, model, round, downloadedBytes, log, signal);
      if (ann.kind === 'evaluate') {
        this.finishedRounds.finish(ann);
        await this.setStatus(
          { state: 'idle', round, progress: null, detail: `evaluated model version ${model.version}: accuracy ${metricsBefore.accuracy.toFixed(3)}` },
          true,
        );
        return { round, outcome: 'evaluated' };
      }
      // 3. local training, unless this round's update was already made before a restart
      const settled = await this.settledBeforeRestart(ann, model.version, log);
      if (settled) return settled;
      const pending = (await this.journal?.pendingUpload(round, model.version, ann.runId)) ?? null;
      let update: LocalUpdate;
      if (pending) {
        log.info({ bytes: pending.source.byteLength }, 'resuming the upload of an update made before a restart');
        update = { bundle: pending.source, saved: { sha256: pending.sha256, upload: pending.upload }, resumedFrom: pending.source };
      } else {
        update = await this.makeUpdate(trainer, model, ann, metricsBefore, signal, log, control);
      }
      // 4. send the update
      return await this.upload(ann, update, signal, log);
    } catch (err) {
      return this.roundFailed(err, ann, signal, log);
    }
  }

  private async evaluateAndReport(
    trainer: Trainer,
    model: GlobalModel,
    round: number,
    downloadedBytes: number,
    log: Logger,
    signal: AbortSignal,
  ): Promise<EvalMetrics> {
    await this.setStatus({ state: 'evaluating', round, progress: null, detail: `global model version ${model.version}` }, true);
    const metricsBefore = await trainer.evaluate(model, { signal });
    log.info({ version: model.version, accuracy: metricsBefore.accuracy }, 'global model evaluated on the local test split');
    await publishEvalReport(this.transport, this.topics, { agent: this.config.agentId, round, baseVersion: model.version, downloadedBytes }, metricsBefore);
    return metricsBefore;
  }

  /** Statistics rounds: each BN layer's input moments over the local training images, sent as `bn-stats`. */
  private async sendStatistics(
    trainer: Trainer,
    model: GlobalModel,
    round: number,
    downloadedBytes: number,
    ann: RoundAnnouncement,
    log: Logger,
  ): Promise<RoundWorkResult> {
    await this.setStatus({ state: 'evaluating', round, progress: null, detail: `batch normalisation statistics of model version ${model.version}` }, true);
    const moments = await trainer.batchNormStatistics(model);
    await publishBnStats(this.transport, this.topics, { agent: this.config.agentId, round, baseVersion: model.version, downloadedBytes }, moments);
    log.info({ version: model.version, layers: moments.length }, 'batch normalisation statistics sent');
    this.finishedRounds.finish(ann);
    await this.setStatus({ state: 'idle', round, progress: null, detail: `sent the batch normalisation statistics of model version ${model.version}` }, true);
    return { round, outcome: 'statistics-sent' };
  }

  /** The round's update was accepted or rejected before a restart (the journal says so): not sent again. */
  private async settledBeforeRestart(ann: RoundAnnouncement, baseVersion: number, log: Logger): Promise<RoundWorkResult | null> {
    const { round } = ann;
    await this.journal?.pruneBefore(round).catch(() => undefined);
    const prior = await this.journal?.record(round);
    // A record of the same round number of another federation run is not about this round.
    if (!prior || prior.baseVersion !== baseVersion || prior.state === 'pending' || (prior.runId ?? ann.runId) !== ann.runId) return null;
    this.finishedRounds.finish(ann);
    // A restart between the verdict and keeping SCAFFOLD's c_i+: settle it now (a no-op when there is none).
    await this.scaffold.settle(ann.runId, round, prior.state === 'accepted').catch((err: Error) => this.storageProblem(`SCAFFOLD c_i: ${err.message}`));
    log.info({ state: prior.state }, "this round's update was already settled before a restart; not sending it again");
    await this.setStatus({ state: 'idle', round, progress: null, detail: `update for round ${round} ${prior.state} (before restart)` }, true);
    return { round, outcome: prior.state };
  }

  /** Train, encode the update, and record it on disk before the first chunk leaves (a power cut from then on resumes the upload). */
  private async makeUpdate(
    trainer: Trainer,
    model: GlobalModel,
    ann: RoundAnnouncement,
    metricsBefore: EvalMetrics,
    signal: AbortSignal,
    log: Logger,
    control: ScaffoldControl | null,
  ): Promise<LocalUpdate> {
    const deps = {
      agentId: this.config.agentId,
      window: this.window,
      log,
      setStatus: this.setStatus.bind(this),
      isTraining: () => this.statusPublisher.current.state === 'training',
    };
    // c_i+ is kept in memory in any case; a disk that refuses it only costs it across a restart.
    const keep = (r: Parameters<ScaffoldClient['keep']>[3]) =>
      this.scaffold.keep(ann, model, control!, r).catch((err: Error) => this.storageProblem(`could not keep SCAFFOLD's c_i on disk: ${err.message}`));
    const scaffold = control ? { control, keep } : null;
    const bundle = await trainLocalUpdate(deps, trainer, model, ann, metricsBefore, signal, scaffold);
    const saved =
      (await this.journal?.savePending(ann.round, model.version, bundle, ann.runId).catch((err: Error) => {
        this.storageProblem(`could not record the update of round ${ann.round} on disk (${err.message}); a restart would train again`);
        return null;
      })) ?? null;
    return { bundle, saved, resumedFrom: null };
  }

  /** Send the update in chunks until the aggregator's verdict; record and report it. */
  private async upload(ann: RoundAnnouncement, update: LocalUpdate, signal: AbortSignal, log: Logger): Promise<RoundWorkResult> {
    const { round } = ann;
    const { bundle, saved } = update;
    await this.setStatus({ state: 'uploading', round, progress: 0, detail: `${bundle.byteLength} bytes (${ann.encoding}${ann.delta ? ', delta' : ''})` }, true);
    const sent = await sendUpdate(this.transport, this.topics, bundle, log, {
      round,
      agent: this.config.agentId,
      chunkBytes: ann.chunkBytes,
      windowChunks: ann.windowChunks,
      maxInflight: this.config.maxInflight,
      ackTimeoutMs: this.config.ackTimeoutMs,
      signal,
      resume: update.resumedFrom !== null,
      ...(saved ? { upload: saved.upload, sha256: saved.sha256 } : {}),
      onProgress: (sentBytes, total) => this.setStatus({ progress: Math.min(1, sentBytes / total) }).catch(() => undefined),
      onReject: (err, topic) => this.reject(err, topic),
    }).finally(() => update.resumedFrom?.close());
    this.bytes.up += sent.sentBytes;
    this.finishedRounds.finish(ann);
    await this.journal?.settle(round, sent.ack.status === 'accepted' ? 'accepted' : 'rejected', sent.ack.reason).catch(() => undefined);
    if (ann.task.scaffold)
      await this.scaffold.settle(ann.runId, round, sent.ack.status === 'accepted').catch((err: Error) => this.storageProblem(`SCAFFOLD c_i: ${err.message}`));
    if (sent.ack.status === 'accepted') {
      log.info({ bytes: bundle.byteLength, resent: sent.resentChunks }, 'update accepted by the aggregator');
      await this.setStatus({ state: 'idle', round, progress: null, detail: `update for round ${round} accepted` }, true);
      return { round, outcome: 'accepted', resentChunks: sent.resentChunks };
    }
    log.warn({ code: sent.ack.code, reason: sent.ack.reason }, 'update rejected by the aggregator');
    this.emitEvent('alert', { severity: 'warning', agent: this.config.agentId, round, code: sent.ack.code, message: `update rejected: ${sent.ack.reason}` });
    await this.setStatus({ state: 'idle', round, progress: null, detail: `update rejected: ${sent.ack.reason}` }, true);
    return { round, outcome: 'rejected', detail: sent.ack.reason ?? '', resentChunks: sent.resentChunks };
  }

  /** The round's work ended by an error: a missed training window (skipped), an abort, or a failure. */
  private async roundFailed(err: unknown, ann: RoundAnnouncement, signal: AbortSignal, log: Logger): Promise<RoundWorkResult> {
    const { round } = ann;
    const { code, message } = describeError(err);
    if (isFedlineError(err, ErrorCodes.WINDOW_MISSED) && !signal.aborted) {
      // Reported, not waited on for ever: the MES learns why this box sent nothing.
      log.warn({ code }, message);
      this.counters.inc(code);
      this.finishedRounds.finish(ann);
      this.emitEvent('alert', { severity: 'warning', agent: this.config.agentId, round, code, message: `round ${round}: ${message}` });
      await this.setStatus({ state: 'idle', round, progress: null, detail: `round ${round} skipped: ${message}` }, true).catch(() => undefined);
      return { round, outcome: 'skipped', detail: message };
    }
    if (isFedlineError(err, ErrorCodes.ABORTED) || isFedlineError(err, ErrorCodes.ROUND_CLOSED) || signal.aborted) {
      log.info({ reason: message }, 'round work stopped');
      if (!this.stopped) await this.setStatus({ state: 'idle', round, progress: null, detail: `stopped: ${message}` }, true).catch(() => undefined);
      return { round, outcome: 'aborted', detail: message };
    }
    log.error({ code, err: message }, 'round failed');
    this.counters.inc(code);
    this.emitEvent('alert', { severity: 'error', agent: this.config.agentId, round, code, message });
    await this.setStatus({ state: 'error', round, progress: null, detail: message }, true).catch(() => undefined);
    return { round, outcome: 'failed', detail: message };
  }

  private async fetchModel(ann: RoundAnnouncement, signal: AbortSignal): Promise<{ model: GlobalModel; downloadedBytes: number }> {
    const fetched = await this.base.fetchModel(ann, {
      signal,
      onProgress: (have, total) => this.setStatus({ progress: have / total }).catch(() => undefined),
      onReject: (err, topic) => this.reject(err, topic),
      onStorageProblem: (message) => this.storageProblem(message),
    });
    this.bytes.down += fetched.downloadedBytes;
    return fetched;
  }

  private async ensureTrainer(meta: ModelMeta, ann: RoundAnnouncement): Promise<Trainer> {
    const { trainer, made } = await this.base.trainerFor(meta, ann);
    if (made) await this.setStatus({ backend: trainer.backend, samples: trainer.samples });
    return trainer;
  }

  private setStatus(patch: StatusPatch, force = false): Promise<void> {
    return this.statusPublisher.set(patch, force);
  }

  /** The agent's disk failed it (full, read-only, corrupt): say so, keep working from memory. */
  private storageProblem(message: string): void {
    this.counters.inc(ErrorCodes.MODEL_STORE);
    this.log.warn({ code: ErrorCodes.MODEL_STORE }, message);
    this.emitEvent('alert', { severity: 'warning', agent: this.config.agentId, code: ErrorCodes.MODEL_STORE, message });
  }

  /** A pause/resume command this agent acted on: answer the MES with a command-result event. */
  commandApplied(verb: 'pause' | 'resume', command: { requestId?: string | undefined }): void {
    this.emitEvent('command-result', {
      verb,
      requestId: command.requestId ?? null,
      status: 'accepted',
      detail: verb === 'pause' ? 'training pauses at the next batch boundary' : 'training may resume when the other window conditions hold',
      by: this.config.agentId,
      federationState: null,
    });
  }

  /** Bad input seen by a part of the agent outside this class (e.g. a malformed command): logged and counted. */
  rejectInput(err: unknown, topic: string): void {
    this.reject(err, topic);
  }

  private reject(err: unknown, topic: string): void {
    const { code, message } = describeError(err);
    this.counters.inc(code);
    this.log.warn({ topic, code }, message);
  }
}
