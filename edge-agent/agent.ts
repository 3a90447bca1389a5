import { EventEmitter } from 'node:events';
import { decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import type { AgentConfig } from '../shared/config/service-config.js';
import { Counters } from '../shared/util/counters.js';
import { describeError, ErrorCodes, FedlineError, isFedlineError } from '../shared/protocol/errors.js';
import { createEventPublisher, type EventSink } from '../shared/transport/event-publisher.js';
import { resolveFederated } from '../shared/fl/federated-set.js';
import type { Logger } from '../shared/util/logger.js';
import {
  modelMetaSchema,
  PROTOCOL_VERSION,
  roundAnnouncementSchema,
  SUPPORTED_VERSIONS,
  type AgentState,
  type AgentStatus,
  type EvalReportMsg,
  type RoundAnnouncement,
  type UpdateMeta,
} from '../shared/protocol/messages.js';
import type { BundleSource } from '../shared/bundle/bundle-source.js';
import { bundleTensors, decodeBundle, type DecodedBundle } from '../shared/bundle/tensor-bundle.js';
import { encodeUpdateSource, tensorValues } from '../shared/bundle/encoded-update.js';
import type { ModelMeta } from '../shared/protocol/messages.js';
import { createTopics, defaultRoot, type Topics } from '../shared/protocol/topics.js';
import type { InboundMessage, Transport } from '../shared/transport/transport.js';
import type { ModelCache } from './model-cache.js';
import { fetchModelBundle } from './model-fetch.js';
import type { GlobalModel, Trainer } from '../training/trainer.js';
import type { UpdateJournal } from './update-journal.js';
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
  verifyModel?: (version: number, sha256: string, signature: string | null) => boolean;
  /** Where sent updates are recorded, so a restart resumes instead of training again. */
  journal?: UpdateJournal;
  logger: Logger;
  /** When this box may train (edge-agent/triggers). Absent: always. */
  gate?: TriggerGate;
}

export interface RoundWorkResult {
  round: number;
  /** skipped: the training window did not open (or reopen) before the round's deadline. */
  outcome: 'accepted' | 'rejected' | 'evaluated' | 'aborted' | 'failed' | 'skipped';
  detail?: string;
}

/** The last-will / offline status, published by the broker when the agent vanishes. */
export function offlineStatus(agent: string): AgentStatus {
  return { v: PROTOCOL_VERSION, agent, state: 'offline', round: null, progress: null, detail: null, backend: null, samples: null, ts: 0 };
}

/**
 * The edge agent: follows the retained round announcement; for each round it is selected for it
 * fetches the base model, evaluates it on the local test split (reported at once), trains, and
 * sends its update in chunks until the aggregator's verdict. A newer announcement, a closed
 * round or stop() aborts the work in progress at the next batch boundary.
 */
export class EdgeAgent extends EventEmitter {
  readonly counters = new Counters();
  private readonly config: Config;
  private readonly transport: Transport;
  private readonly cache: ModelCache;
  private readonly trainerFor: AgentDeps['trainerFor'];
  private readonly journal: UpdateJournal | null;
  private readonly verifyModel: AgentDeps['verifyModel'] | null;
  private readonly log: Logger;
  private readonly topics: Topics;
  private readonly emitEvent: EventSink;
  private readonly gate: TriggerGate | null;
  private readonly window: TrainingWindow | null;
  private trainer: Trainer | null = null;
  private current: { round: number; controller: AbortController; done: Promise<RoundWorkResult> } | null = null;
  private readonly finishedRounds = new Set<number>();
  private status: AgentStatus;
  private lastStatusAt = 0;
  private stopped = false;
  private bytes = { up: 0, down: 0 };

  constructor(config: Config, deps: AgentDeps) {
    super();
    this.config = config;
    this.transport = deps.transport;
    this.cache = deps.cache;
    this.trainerFor = deps.trainerFor;
    this.journal = deps.journal ?? null;
    this.verifyModel = deps.verifyModel ?? null;
    this.log = deps.logger.child({ module: 'agent', agent: config.agentId });
    this.topics = createTopics(config.topicRoot ?? defaultRoot(config.federation));
    this.emitEvent = createEventPublisher(this.transport, this.topics, config.federation, this.log, undefined, config.agentId);
    this.gate = deps.gate ?? null;
    this.window = this.gate ? new TrainingWindow(this.gate) : null;
    this.status = { v: PROTOCOL_VERSION, agent: config.agentId, state: 'starting', round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() };
  }

  get agentId(): string {
    return this.config.agentId;
  }

  get state(): AgentState {
    return this.status.state;
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
    const patch: Parameters<EdgeAgent['setStatus']>[0] = { window: { state: snap.state, detail: snap.detail } };
    if (this.status.state === 'waiting-window') patch.detail = `training window ${snap.state}: ${snap.detail}`;
    this.setStatus(patch, true).catch(() => undefined);
  };

  /** A trigger source failed (OPC UA server unreachable, node missing, session lost) or recovered: alert the MES. */
  private readonly onWindowProblem = (p: SourceProblem): void => {
    if (this.stopped) return;
    if (!p.recovered) this.counters.inc(p.code);
    this.emitEvent('alert', { severity: p.recovered ? 'info' : 'warning', agent: this.config.agentId, code: p.code, message: p.message, ...(this.status.round !== null ? { round: this.status.round } : {}) });
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
    const cur = this.current;
    if (ann.state === 'complete') {
      cur?.controller.abort(new FedlineError(ErrorCodes.ABORTED, 'federation complete'));
      this.log.info({ finalVersion: ann.base.version }, 'federation complete');
      this.setStatus({ state: 'idle', round: null, progress: null, detail: `federation complete; final model version ${ann.base.version}` }, true).catch(() => undefined);
      this.emit('complete', ann);
      return;
    }
    if (ann.state === 'closed') {
      if (cur && cur.round === ann.round) cur.controller.abort(new FedlineError(ErrorCodes.ROUND_CLOSED, `round ${ann.round} closed`));
      this.finishedRounds.add(ann.round);
      return;
    }
    if (cur && cur.round === ann.round) return; // the same announcement again (retained, reconnect)
    if (this.finishedRounds.has(ann.round)) return;
    if (cur) cur.controller.abort(new FedlineError(ErrorCodes.ROUND_CLOSED, `round ${ann.round} replaces round ${cur.round}`));
    if (!ann.selected.includes(this.config.agentId)) {
      this.log.info({ round: ann.round }, 'not selected for this round');
      this.setStatus({ state: 'idle', round: ann.round, progress: null, detail: 'not selected for this round' }).catch(() => undefined);
      return;
    }
    const controller = new AbortController();
    const previous = cur?.done.catch(() => undefined) ?? Promise.resolve();
    const done = previous.then(() => this.work(ann, controller.signal));
    const entry = { round: ann.round, controller, done };
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
      const { model, downloadedBytes } = await this.fetchModel(ann, signal);
      const trainer = await this.ensureTrainer(model.meta, ann);
      // The box's GPU serves the line first: evaluating and training wait for the training window.
      if (this.window) {
        await this.window.acquire(ann.deadlineAt, signal, (why) => {
          this.setStatus({ state: 'waiting-window', round, progress: null, detail: `training window closed: ${why}` }, true).catch(() => undefined);
        });
      }
      // 2. evaluate the global model first, and report it at once (the seed paper's workflow)
      await this.setStatus({ state: 'evaluating', round, progress: null, detail: `global model version ${model.version}` }, true);
      const metricsBefore = await trainer.evaluate(model);
      log.info({ version: model.version, accuracy: metricsBefore.accuracy }, 'global model evaluated on the local test split');
      const report: EvalReportMsg = { v: PROTOCOL_VERSION, type: 'eval', round, agent: this.config.agentId, baseVersion: model.version, metrics: metricsBefore, downloadedBytes };
      await this.transport.publish(this.topics.update(round, this.config.agentId), packMsg(report), { qos: 1 });
      if (ann.kind === 'evaluate') {
        this.finishedRounds.add(round);
        await this.setStatus({ state: 'idle', round, progress: null, detail: `evaluated model version ${model.version}: accuracy ${metricsBefore.accuracy.toFixed(3)}` }, true);
        return { round, outcome: 'evaluated' };
      }
      // 3. local training, unless this round's update was already made before a restart
      await this.journal?.pruneBefore(round).catch(() => undefined);
      const prior = await this.journal?.record(round);
      if (prior && prior.baseVersion === model.version && prior.state !== 'pending') {
        this.finishedRounds.add(round);
        log.info({ state: prior.state }, 'this round\'s update was already settled before a restart; not sending it again');
        await this.setStatus({ state: 'idle', round, progress: null, detail: `update for round ${round} ${prior.state} (before restart)` }, true);
        return { round, outcome: prior.state };
      }
      const pending = (await this.journal?.pendingUpload(round, model.version)) ?? null;
      const resume = pending !== null;
      let bundle: BundleSource;
      let saved: { sha256: string; upload: string } | null = null;
      if (pending) {
        log.info({ bytes: pending.source.byteLength }, 'resuming the upload of an update made before a restart');
        bundle = pending.source;
        saved = { sha256: pending.sha256, upload: pending.upload };
      } else {
        const federatedNames = resolveFederated(ann.task.federated, model.tensors.map((t) => t.name), model.meta.headTensors);
        await this.setStatus({ state: 'training', round, progress: 0, detail: `${ann.task.epochs} epoch(s) on ${trainer.samples.train} images` }, true);
        const onProgress = (p: import('../training/trainer.js').TrainProgress) => {
          if (this.status.state !== 'training') return;
          const progress = (p.epoch * p.batchesPerEpoch + p.batch) / (p.epochs * p.batchesPerEpoch);
          this.setStatus({ progress, detail: `epoch ${p.epoch + 1}/${p.epochs}, batch ${p.batch}/${p.batchesPerEpoch}${p.loss !== null ? `, loss ${p.loss.toFixed(4)}` : ''}` }).catch(() => undefined);
        };
        const result = this.window
          ? await this.window.train(trainer, model, ann.task, federatedNames, {
              signal,
              deadlineAt: ann.deadlineAt,
              onProgress,
              onPaused: (at, why) => {
                log.info({ epoch: at.epoch, batch: at.batch }, 'training paused at a batch boundary: the training window closed');
                this.setStatus({ state: 'paused', detail: `paused before epoch ${at.epoch + 1}/${at.epochs}, batch ${at.batch + 1}/${at.batchesPerEpoch}: ${why}` }, true).catch(() => undefined);
              },
              onResumed: (at) => {
                log.info({ epoch: at.epoch, batch: at.batch }, 'training resumed: the training window opened');
                this.setStatus({ state: 'training', detail: `resumed at epoch ${at.epoch + 1}/${at.epochs}, batch ${at.batch + 1}/${at.batchesPerEpoch}` }, true).catch(() => undefined);
              },
            })
          : await trainer.train(model, ann.task, federatedNames, { signal, onProgress });
        log.info({ trainMs: result.trainMs, accuracyAfter: result.metricsAfter.accuracy, samples: result.sampleCount }, 'local training done');
        const meta: UpdateMeta = {
          kind: 'update',
          agent: this.config.agentId,
          round,
          baseVersion: model.version,
          sampleCount: result.sampleCount,
          epochs: ann.task.epochs,
          metricsBefore,
          metricsAfter: result.metricsAfter,
          trainMs: result.trainMs,
          backend: trainer.backend,
          delta: ann.delta,
        };
        // Encoded chunk by chunk as it is read (f32/f16/q8, optionally as a difference to the base).
        bundle = encodeUpdateSource(result.tensors.map(tensorValues), meta, { encoding: ann.encoding, delta: ann.delta, base: new Map(model.tensors.map((t) => [t.name, t.data])) });
        // On disk before the first chunk leaves: a power cut from here on resumes this upload.
        saved =
          (await this.journal?.savePending(round, model.version, bundle).catch((err: Error) => {
            this.storageProblem(`could not record the update of round ${round} on disk (${err.message}); a restart would train again`);
            return null;
          })) ?? null;
      }
      // 4. send the update
      await this.setStatus({ state: 'uploading', round, progress: 0, detail: `${bundle.byteLength} bytes (${ann.encoding}${ann.delta ? ', delta' : ''})` }, true);
      const sent = await sendUpdate(this.transport, this.topics, bundle, log, {
        round,
        agent: this.config.agentId,
        chunkBytes: ann.chunkBytes,
        windowChunks: ann.windowChunks,
        maxInflight: this.config.maxInflight,
        ackTimeoutMs: this.config.ackTimeoutMs,
        signal,
        resume,
        ...(saved ? { upload: saved.upload, sha256: saved.sha256 } : {}),
        onProgress: (sentBytes, total) => this.setStatus({ progress: Math.min(1, sentBytes / total) }).catch(() => undefined),
        onReject: (err, topic) => this.reject(err, topic),
      }).finally(() => pending?.source.close());
      this.bytes.up += sent.sentBytes;
      this.finishedRounds.add(round);
      await this.journal?.settle(round, sent.ack.status === 'accepted' ? 'accepted' : 'rejected', sent.ack.reason).catch(() => undefined);
      if (sent.ack.status === 'accepted') {
        log.info({ bytes: bundle.byteLength, resent: sent.resentChunks }, 'update accepted by the aggregator');
        await this.setStatus({ state: 'idle', round, progress: null, detail: `update for round ${round} accepted` }, true);
        return { round, outcome: 'accepted' };
      }
      log.warn({ code: sent.ack.code, reason: sent.ack.reason }, 'update rejected by the aggregator');
      this.emitEvent('alert', { severity: 'warning', agent: this.config.agentId, round, code: sent.ack.code, message: `update rejected: ${sent.ack.reason}` });
      await this.setStatus({ state: 'idle', round, progress: null, detail: `update rejected: ${sent.ack.reason}` }, true);
      return { round, outcome: 'rejected', detail: sent.ack.reason ?? '' };
    } catch (err) {
      const { code, message } = describeError(err);
      if (isFedlineError(err, ErrorCodes.WINDOW_MISSED) && !signal.aborted) {
        // Reported, not waited on for ever: the MES learns why this box sent nothing.
        log.warn({ code }, message);
        this.counters.inc(code);
        this.finishedRounds.add(round);
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
  }

  private async fetchModel(ann: RoundAnnouncement, signal: AbortSignal): Promise<{ model: GlobalModel; downloadedBytes: number }> {
    const ref = ann.base;
    // Before anything is downloaded or read from the cache: is this model the aggregator's?
    if (this.verifyModel && !this.verifyModel(ref.version, ref.sha256, ref.signature)) {
      throw new FedlineError(
        ErrorCodes.MODEL_SIGNATURE,
        ref.signature ? `model version ${ref.version} (sha256 ${ref.sha256.slice(0, 12)}…) has a signature that does not verify with the aggregator's public key; refusing it` : `model version ${ref.version} is not signed; refusing it (modelPublicKeyFile is set)`,
      );
    }
    // Downloaded straight into the cache (checked as it arrives), then read once for training.
    const { bundle, downloadedBytes } = await fetchModelBundle(this.transport, this.topics, this.cache, ref, this.log, {
      maxModelBytes: this.config.maxModelBytes,
      stallMs: 30_000,
      signal,
      onProgress: (have, total) => this.setStatus({ progress: have / total }).catch(() => undefined),
      onReject: (err, topic) => this.reject(err, topic),
      onStorageProblem: (message) => this.storageProblem(message),
    });
    this.bytes.down += downloadedBytes;
    let decoded: DecodedBundle<ModelMeta>;
    try {
      decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
    } catch (err) {
      throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `global model version ${ref.version} cannot be read: ${describeError(err).message}`);
    }
    if (decoded.header.meta.version !== ref.version) throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `bundle says version ${decoded.header.meta.version}, announced ${ref.version}`);
    return { model: { version: ref.version, sha256: ref.sha256, meta: decoded.header.meta, tensors: bundleTensors(decoded) }, downloadedBytes };
  }

  private async ensureTrainer(meta: ModelMeta, ann: RoundAnnouncement): Promise<Trainer> {
    if (meta.classes.join('\n') !== ann.classes.join('\n')) {
      throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `model classes [${meta.classes.join(', ')}] differ from the round's [${ann.classes.join(', ')}]`);
    }
    if (!this.trainer) {
      this.trainer = await this.trainerFor(meta);
      await this.setStatus({ backend: this.trainer.backend, samples: this.trainer.samples });
    }
    return this.trainer;
  }

  private async setStatus(patch: Partial<Omit<AgentStatus, 'v' | 'agent' | 'ts'>>, force = false): Promise<void> {
    const prevState = this.status.state;
    this.status = { ...this.status, ...patch, ts: Date.now() };
    // Progress updates are throttled; state changes always go out.
    const now = Date.now();
    if (!force && patch.state === undefined && now - this.lastStatusAt < 500) return;
    this.lastStatusAt = now;
    await this.transport.publish(this.topics.status(this.config.agentId), encodeJson(this.status), { qos: 1, retain: true });
    if (this.status.state !== prevState) {
      this.emit('state', this.status);
      this.emitEvent('agent-state', { agent: this.config.agentId, state: this.status.state, round: this.status.round, progress: this.status.progress, detail: this.status.detail });
    }
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
