import { scheduledLearningRate } from '../shared/fl/schedule.js';
import { EventEmitter } from 'node:events';
import { appendFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { systemClock, type Clock, deferred, type Deferred } from '../shared/util/async.js';
import { chunkCount } from '../shared/bundle/chunking.js';
import { publishChunks } from '../shared/bundle/chunk-publisher.js';
import { decodeJson, decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { createEventPublisher, type EventSink } from '../shared/transport/event-publisher.js';
import { resolveFederated } from '../shared/fl/federated-set.js';
import { writeJsonAtomic } from '../shared/util/fs-atomic.js';
import type { Logger } from '../shared/util/logger.js';
import {
  agentStatusSchema,
  modelMetaSchema,
  PROTOCOL_VERSION,
  SUPPORTED_VERSIONS,
  updateTopicMessageSchema,
  type AckMsg,
  type EvalMetrics,
  type EvalReportMsg,
  type ModelManifest,
  type ModelMeta,
  type RoundAnnouncement,
  type UpdateChunkMsg,
  type UpdateDoneMsg,
} from '../shared/protocol/messages.js';
import { Counters } from '../shared/util/counters.js';
import { decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { deltaNorms } from '../shared/fl/fedavg.js';
import { dtypeOf } from '../shared/bundle/value-encodings.js';
import { createTopics, defaultRoot, type Topics } from '../shared/protocol/topics.js';
import type { InboundMessage, Transport } from '../shared/transport/transport.js';
import { ModelBuilder } from './model-builder.js';
import type { ModelStore, StoredModel } from './model-store.js';
import { RoundState, type CloseDecision, type RoundKind, type RoundOutcome } from './round-state.js';
import { FedAvg, type Strategy } from './strategy.js';
import { MesCommands } from './mes-commands.js';
import { UpdateReceiver } from './update-receiver.js';
import type { SpooledUpdate, UpdateSpool } from './update-spool.js';
import { sampleLimit, screenUpdateNorms } from './robustness.js';

type Config = Readonly<AggregatorConfig> | AggregatorConfig;

export interface AggregatorDeps {
  transport: Transport;
  store: ModelStore;
  spool: UpdateSpool;
  /** Builds the initial global model bundle (version 0) when the store is empty. */
  initialModel: () => Promise<Uint8Array>;
  /** Signs a model (version, SHA-256) for the agents to verify; absent: models go unsigned. */
  signModel?: (version: number, sha256: string) => string;
  strategy?: Strategy;
  logger: Logger;
  clock?: Clock;
}

/** One round as it happened; the journal holds these and the MES gets them as round-completed. */
export interface RoundRecord {
  round: number;
  kind: RoundKind;
  baseVersion: number;
  selected: string[];
  deadlineAt: number;
  startedAt: number;
  closedAt: number | null;
  outcome: RoundOutcome | null;
  reason: string | null;
  newVersion: number | null;
  participants: string[];
  sampleCounts: Record<string, number>;
  /** The base model evaluated on each agent's local test split (before local training). */
  baseMetrics: Record<string, EvalMetrics>;
  /** Each agent's local model after training, on its local test split. */
  localMetrics: Record<string, EvalMetrics | null>;
  failures: { agent: string; code: string; reason: string }[];
  trainMs: Record<string, number>;
  bytesUp: number;
  bytesDown: number;
  aggregateMs: number | null;
  durationMs: number | null;
  /** How updates were encoded this round. */
  encoding?: string;
  delta?: boolean;
  /** When each accepted update was verified and spooled (ms since the epoch). */
  acceptedAt?: Record<string, number>;
  /** When the last update chunk of the round arrived (ms since the epoch). */
  lastChunkAt?: number | null;
  /** When the updates were folded into the average (FedAvg done), when the new global model was stored (written, hashed, fsynced) and when its chunks were all published. */
  aggregatedAt?: number | null;
  modelStoredAt?: number | null;
  modelPublishedAt?: number | null;
}

export interface Journal {
  federation: string;
  currentVersion: number;
  complete: boolean;
  finalVersion: number | null;
  /** Training rounds closed so far (all time, including those moved to history.jsonl). */
  trainRoundsDone: number;
  /** The most recent rounds (older ones are appended to history.jsonl, see JOURNAL_KEEP_ROUNDS). */
  rounds: RoundRecord[];
}

/**
 * Rounds kept in journal.json (and in memory). A federation that runs for months must not grow
 * its journal or its heap with every round: older records move to the append-only history.jsonl.
 */
export const JOURNAL_KEEP_ROUNDS = 200;

export interface FederationResult {
  finalVersion: number;
  reason: string;
  rounds: RoundRecord[];
}

interface ActiveRound {
  state: RoundState;
  record: RoundRecord;
  base: StoredModel;
  federatedNames: string[];
  /** Uploads being received, per agent (written straight into the spool). */
  receivers: Map<string, UpdateReceiver>;
  /** Upload ids being verified / refused, per agent. */
  verifying: Map<string, string>;
  refused: Map<string, { upload: string; sha256: string | null; code: string; reason: string }>;
  closing: Deferred<CloseDecision>;
  deadlineTimer: unknown;
}

const MAX_MISSING_LISTED = 4096;
/** Smallest per-agent flow-control window, chunks: below it acks would outnumber chunks. */
const MIN_WINDOW_CHUNKS = 8;
/** How long stop() waits for the run loop to record the round it closed. */
const STOP_WAIT_MS = 10_000;

/**
 * The aggregator service: announce a round (retained) -> collect chunked updates -> verify ->
 * spool -> close -> aggregate (FedAvg) -> store -> publish the new global model -> next round.
 * MQTT-facing code lives here; the decisions live in RoundState, the math in the Strategy.
 */
export class Aggregator extends EventEmitter {
  readonly counters = new Counters();
  private readonly config: Config;
  private readonly transport: Transport;
  private readonly store: ModelStore;
  private readonly spool: UpdateSpool;
  private readonly strategy: Strategy;
  private readonly initialModel: () => Promise<Uint8Array>;
  private readonly signModel: ((version: number, sha256: string) => string) | null;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly topics: Topics;
  private readonly emitEvent: EventSink;
  private readonly online = new Set<string>();
  private readonly onlineChanged = new EventEmitter();
  private journal: Journal;
  private current: ActiveRound | null = null;
  private global: StoredModel | null = null;
  private stopped = false;
  private readonly stopSignal = deferred<void>();
  private journalChain: Promise<void> = Promise.resolve();
  /** The run loop, once started (settles when run() ends, whatever the outcome). */
  private running: Promise<void> | null = null;
  private lastAnnouncement: RoundAnnouncement | null = null;
  /** MES commands (start, pause, resume, stop, model-manifest): aggregator/mes-commands.ts. */
  private readonly commands: MesCommands;

  constructor(config: Config, deps: AggregatorDeps) {
    super();
    this.config = config;
    this.transport = deps.transport;
    this.store = deps.store;
    this.spool = deps.spool;
    this.strategy = deps.strategy ?? new FedAvg();
    this.initialModel = deps.initialModel;
    this.signModel = deps.signModel ?? null;
    this.log = deps.logger.child({ module: 'aggregator' });
    this.clock = deps.clock ?? systemClock;
    this.topics = createTopics(config.topicRoot ?? defaultRoot(config.federation));
    this.emitEvent = createEventPublisher(this.transport, this.topics, config.federation, this.log, (_type, event) => this.emit('event', event));
    this.journal = { federation: config.federation, currentVersion: 0, complete: false, finalVersion: null, trainRoundsDone: 0, rounds: [] };
    this.stopSignal.promise.catch(() => undefined);
    this.commands = new MesCommands({
      transport: this.transport,
      topics: this.topics,
      stateDir: config.stateDir,
      log: this.log.child({ module: 'mes-commands' }),
      emitEvent: this.emitEvent,
      counters: this.counters,
      autoStart: config.autoStart,
      onStop: (reason) => this.current?.closing.resolve({ close: true, outcome: 'keep', reason }),
    });
  }

  get journalPath(): string {
    return join(this.config.stateDir, 'journal.json');
  }

  history(): readonly RoundRecord[] {
    return this.journal.rounds;
  }

  /** Run the federation to its end (rounds done or target reached). */
  async run(): Promise<FederationResult> {
    const running = this.runFederation();
    this.running = running.then(
      () => undefined,
      () => undefined,
    );
    return running;
  }

  private async runFederation(): Promise<FederationResult> {
    await this.loadJournal();
    await this.transport.subscribe(this.topics.statusAll(), this.onStatus);
    await this.transport.subscribe(this.topics.updatesAll(), this.onUpdateMessage);
    // Connected already: every later 'connect' is a reconnect.
    this.transport.on('connect', () => void this.republishRetained());
    await this.commands.start();

    this.global = await this.ensureInitialModel();
    await this.publishModel(this.global);

    let reason = `${this.config.rounds} rounds done`;
    const trainRounds = () => this.journal.trainRoundsDone;
    const unfinished = this.journal.rounds.find((r) => r.outcome === null);
    if (this.journal.complete) {
      reason = 'federation already complete (journal)';
    } else {
      if (unfinished) {
        const outcome = await this.runRound(unfinished.kind, unfinished);
        if (outcome === 'target-reached') reason = 'target accuracy reached';
      }
      while (!this.stopped && reason !== 'target accuracy reached' && trainRounds() < this.config.rounds) {
        const outcome = await this.runRound('train');
        if (outcome === 'target-reached') reason = 'target accuracy reached';
      }
      const last = this.journal.rounds.at(-1);
      const lastEvaluatedCurrent = last && (last.outcome === 'target-reached' || (last.kind === 'evaluate' && last.baseVersion === this.global.version));
      if (!this.stopped && this.config.evaluateFinalModel && !lastEvaluatedCurrent) await this.runRound('evaluate');
      if (this.stopped) reason = 'stopped';
    }
    if (!this.stopped) {
      this.journal.complete = true;
      this.journal.finalVersion = this.global.version;
      await this.saveJournal();
      await this.announce(this.completionAnnouncement());
      this.commands.markComplete();
      this.emitEvent('federation-completed', { finalVersion: this.global.version, reason, rounds: this.journal.rounds.length, modelDir: this.store.dir(this.global.version) });
      this.log.info({ finalVersion: this.global.version, reason }, 'federation complete');
    }
    return { finalVersion: this.global.version, reason, rounds: this.journal.rounds };
  }

  /** Stop after the current step; the journal lets a later start continue. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopSignal.resolve();
    if (this.current) this.current.closing.resolve({ close: true, outcome: 'keep', reason: 'aggregator stopping' });
    await this.transport.unsubscribe(this.topics.updatesAll(), this.onUpdateMessage).catch(() => undefined);
    await this.transport.unsubscribe(this.topics.statusAll(), this.onStatus).catch(() => undefined);
    await this.commands.stop();
    // Let the run loop record the closed round before the caller closes the transport or removes
    // the state folder (bounded: a step that does not notice the stop must not hold it up).
    if (this.running) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.running, new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_WAIT_MS)))]);
      clearTimeout(timer);
    }
    await this.journalChain;
  }

  // ---------------------------------------------------------------- rounds

  private async runRound(kind: RoundKind, resume?: RoundRecord): Promise<RoundOutcome> {
    const base = this.global!;
    const roundNo = resume?.round ?? (this.journal.rounds.at(-1)?.round ?? 0) + 1;
    let selected = resume?.selected;
    while (!selected) {
      // Paused or stopped by the MES: no new round until resume / start.
      await this.commands.waitUntilRunning(this.stopSignal.promise, (state) => this.log.info({ state, round: roundNo }, `federation ${state} by MES command; round ${roundNo} waits`));
      if (this.stopped) return 'keep';
      const online = await this.waitForAgents();
      if (this.commands.state === 'running') selected = online;
    }
    if (this.stopped) return 'keep';
    const now = this.clock.now();
    const deadlineAt = resume && resume.deadlineAt > now ? resume.deadlineAt : now + this.config.roundDeadlineMs;
    const state = new RoundState({
      round: roundNo,
      kind,
      baseVersion: base.version,
      selected,
      minClients: this.config.minClients,
      deadlineAt,
      startedAt: resume?.startedAt ?? now,
      targetAccuracy: kind === 'train' ? this.config.targetAccuracy : null,
    });
    const record: RoundRecord = resume ?? {
      round: roundNo,
      kind,
      baseVersion: base.version,
      selected: [...state.plan.selected],
      deadlineAt,
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
      trainMs: {},
      bytesUp: 0,
      bytesDown: 0,
      aggregateMs: null,
      durationMs: null,
    };
    record.deadlineAt = deadlineAt;
    record.encoding = this.config.encoding;
    record.delta = this.config.delta;
    record.acceptedAt ??= {};
    const federatedNames = resolveFederated(
      this.config.task.federated,
      base.tensors.map((t) => t.name),
      base.headTensors,
    );
    const active: ActiveRound = {
      state,
      record,
      base,
      federatedNames,
      receivers: new Map(),
      verifying: new Map(),
      refused: new Map(),
      closing: deferred<CloseDecision>(),
      deadlineTimer: null,
    };
    // Updates verified before a restart are on disk: take them back without asking agents again.
    this.spool.ensureRound(roundNo);
    for (const u of await this.spool.list(roundNo, this.log)) {
      if (state.isSelected(u.agent) && !state.hasAccepted(u.agent)) {
        state.recordAccepted(u);
        this.log.info({ round: roundNo, agent: u.agent }, 'update restored from spool');
      }
    }
    for (const [agent, metrics] of Object.entries(record.baseMetrics)) state.recordEval(agent, metrics);
    if (!resume) this.journal.rounds.push(record);
    await this.saveJournal();

    this.current = active;
    const log = this.log.child({ round: roundNo });
    active.deadlineTimer = this.clock.setTimeout(() => this.checkClose(active), Math.max(0, deadlineAt - this.clock.now()) + 5);
    await this.announce(this.announcement(active, 'open'));
    this.emitEvent('round-started', { round: roundNo, kind, baseVersion: base.version, selected: state.plan.selected, deadlineAt, resumed: Boolean(resume) });
    log.info({ kind, baseVersion: base.version, selected: state.plan.selected, deadlineAt: new Date(deadlineAt).toISOString() }, 'round started');
    this.checkClose(active);

    const decision = await active.closing.promise;
    state.markClosed();
    this.clock.clearTimeout(active.deadlineTimer);
    for (const r of active.receivers.values()) r.discard();
    active.receivers.clear();
    if (!decision.close) throw new Error('unreachable: round resolved without closing');
    await this.announce(this.announcement(active, 'closed'));
    const closedAt = this.clock.now();

    record.closedAt = closedAt;
    record.outcome = decision.outcome;
    record.reason = decision.reason;
    record.baseMetrics = state.evalsByAgent();
    const accepted = state.acceptedUpdates();
    record.participants = accepted.map((u) => u.agent);
    record.sampleCounts = Object.fromEntries(accepted.map((u) => [u.agent, u.sampleCount]));
    record.localMetrics = Object.fromEntries(accepted.map((u) => [u.agent, u.metricsAfter]));
    record.trainMs = Object.fromEntries(accepted.map((u) => [u.agent, u.trainMs]));
    record.failures = state.failureList();

    if (decision.outcome === 'aggregate' && !this.stopped) {
      const started = this.clock.now();
      try {
        const kept = await this.screenPoisoned(active, accepted as SpooledUpdate[]);
        if (kept.length < accepted.length) {
          record.participants = kept.map((u) => u.agent);
          record.sampleCounts = Object.fromEntries(kept.map((u) => [u.agent, u.sampleCount]));
          record.failures = [...record.failures, ...active.state.failureList().filter((f) => !record.failures.some((g) => g.agent === f.agent))];
        }
        const next = kept.length >= this.config.minClients ? await this.aggregate(active, kept) : null;
        if (next) {
          record.newVersion = next.version;
          this.global = next;
          this.journal.currentVersion = next.version;
        } else {
          record.outcome = 'keep';
          record.reason =
            kept.length < this.config.minClients
              ? `${accepted.length - kept.length} update(s) refused as outliers; ${kept.length} left, ${this.config.minClients} needed; the global model stays as it was`
              : 'strategy kept the global model';
          this.emitEvent('alert', { severity: 'warning', code: 'FL_ROUND_KEPT', message: `round ${roundNo}: ${record.reason}` });
        }
      } catch (err) {
        const { code, message } = describeError(err);
        log.error({ err: message, code }, 'aggregation failed; keeping the global model');
        this.emitEvent('alert', { severity: 'error', code, message: `round ${roundNo}: aggregation failed: ${message}` });
        record.outcome = 'keep';
        record.reason = `aggregation failed: ${message}`;
      }
      record.aggregateMs = this.clock.now() - started;
    } else if (decision.outcome === 'keep') {
      this.emitEvent('alert', { severity: 'warning', code: 'FL_ROUND_KEPT', message: `round ${roundNo}: ${decision.reason}` });
      log.warn({ reason: decision.reason }, 'round closed without aggregation; global model kept');
    }
    record.durationMs = this.clock.now() - record.startedAt;
    this.current = null;
    if (record.kind === 'train') this.journal.trainRoundsDone++;
    await this.spillOldRounds();
    await this.saveJournal();
    await this.spool.dropRound(roundNo);
    this.emitEvent('round-completed', { ...record });
    log.info(
      { outcome: record.outcome, participants: record.participants, newVersion: record.newVersion, durationMs: record.durationMs, bytesUp: record.bytesUp },
      'round completed',
    );
    return record.outcome!;
  }

  private checkClose(active: ActiveRound): void {
    if (active.state.closed) return;
    const decision = active.state.decide(this.clock.now());
    if (decision.close) active.closing.resolve(decision);
  }

  private async waitForAgents(): Promise<string[]> {
    const { agents, minClients, waitForAgentsMs } = this.config;
    const started = this.clock.now();
    let warned = false;
    for (;;) {
      if (this.stopped) return [];
      const online = agents.filter((a) => this.online.has(a));
      if (online.length === agents.length) return online;
      const waited = this.clock.now() - started;
      if (waited >= waitForAgentsMs && online.length >= minClients) {
        this.log.warn({ online, offline: agents.filter((a) => !this.online.has(a)) }, 'starting the round without the offline agents');
        return online;
      }
      if (waited >= waitForAgentsMs && !warned) {
        warned = true;
        const message = `only ${online.length} of ${agents.length} agents online, ${minClients} needed to start a round; waiting`;
        this.log.warn({ online }, message);
        this.emitEvent('alert', { severity: 'warning', code: 'FL_WAITING_FOR_AGENTS', message });
      }
      await new Promise<void>((resolve) => {
        const t = this.clock.setTimeout(resolve, 1000);
        this.onlineChanged.once('change', () => {
          this.clock.clearTimeout(t);
          resolve();
        });
        this.stopSignal.promise.then(resolve);
      });
    }
  }

  private announcement(active: ActiveRound, state: 'open' | 'closed'): RoundAnnouncement {
    const { plan } = active.state;
    return {
      v: PROTOCOL_VERSION,
      type: 'round',
      federation: this.config.federation,
      round: plan.round,
      state,
      kind: plan.kind,
      base: this.modelRef(active.base),
      task: this.taskFor(),
      classes: [...active.base.classes],
      selected: [...plan.selected],
      minClients: plan.minClients,
      deadlineAt: plan.deadlineAt,
      chunkBytes: this.config.chunkBytes,
      encoding: this.config.encoding,
      delta: this.config.delta,
      windowChunks: this.config.windowChunks > 0 ? Math.max(MIN_WINDOW_CHUNKS, Math.floor(this.config.windowChunks / plan.selected.length)) : 0,
      issuedAt: this.clock.now(),
    };
  }

  private completionAnnouncement(): RoundAnnouncement {
    const last = this.journal.rounds.at(-1);
    return {
      v: PROTOCOL_VERSION,
      type: 'round',
      federation: this.config.federation,
      round: last?.round ?? 0,
      state: 'complete',
      kind: last?.kind ?? 'evaluate',
      base: this.modelRef(this.global!),
      task: this.taskFor(),
      classes: [...this.global!.classes],
      selected: [],
      minClients: this.config.minClients,
      deadlineAt: this.clock.now(),
      chunkBytes: this.config.chunkBytes,
      encoding: this.config.encoding,
      delta: this.config.delta,
      windowChunks: 0,
      issuedAt: this.clock.now(),
    };
  }

  /** The local training task of a round, with the server-side learning-rate schedule applied. */
  private taskFor(): RoundAnnouncement['task'] {
    const { learningRateDecay, ...task } = this.config.task;
    // The round being announced is not closed yet: every closed training round came before it.
    const trainRoundsBefore = this.journal.trainRoundsDone;
    return { ...task, learningRate: scheduledLearningRate(task.learningRate, learningRateDecay, trainRoundsBefore), federated: task.federated as RoundAnnouncement['task']['federated'] };
  }

  private modelRef(model: StoredModel): RoundAnnouncement['base'] {
    return {
      version: model.version,
      sha256: model.sha256,
      bytes: model.bytes,
      chunks: chunkCount(model.bytes, this.config.chunkBytes),
      chunkBytes: this.config.chunkBytes,
      signature: this.signModel ? this.signModel(model.version, model.sha256) : null,
    };
  }

  private async announce(a: RoundAnnouncement): Promise<void> {
    this.lastAnnouncement = a;
    await this.transport.publish(this.topics.round(), packMsg(a), { qos: 1, retain: true });
  }

  /**
   * After a reconnect the broker may have lost its retained messages (an embedded broker without
   * persistence restarted, a Mosquitto killed before its autosave): publish the round announcement
   * and the current global model again, so that agents joining or restarting now find them.
   */
  private async republishRetained(): Promise<void> {
    if (this.stopped) return;
    this.log.info({ round: this.lastAnnouncement?.round ?? null, version: this.global?.version ?? null }, 'reconnected; publishing retained state again');
    try {
      if (this.lastAnnouncement) await this.transport.publish(this.topics.round(), packMsg(this.lastAnnouncement), { qos: 1, retain: true });
      if (this.global) await this.publishModel(this.global, false);
    } catch (err) {
      this.log.warn({ err: describeError(err).message }, 'could not republish retained state; will try at the next reconnect');
    }
  }

  // ---------------------------------------------------------------- models

  private async ensureInitialModel(): Promise<StoredModel> {
    const latest = await this.store.latest();
    if (latest) {
      // Streamed check (a 557 MB model is never read into memory): never serve a damaged model.
      await this.store.verify(latest.version);
      this.log.info({ version: latest.version, sha256: latest.sha256 }, 'global model loaded from the store');
      this.journal.currentVersion = latest.version;
      return latest;
    }
    const bundle = await this.initialModel();
    const decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
    if (decoded.header.meta.version !== 0) throw new Error('the initial model must be version 0');
    const classes = decoded.header.meta.classes;
    if (classes.join('\n') !== this.config.model.classes.join('\n')) {
      throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `initial model classes [${classes.join(', ')}] differ from the configured classes [${this.config.model.classes.join(', ')}]`);
    }
    const stored = await this.store.save(bundle);
    this.log.info({ version: 0, sha256: stored.sha256, bytes: stored.bytes, tensors: stored.tensors.length }, 'initial global model created');
    return stored;
  }

  private async publishModel(model: StoredModel, announce = true): Promise<void> {
    // Chunks are read from the store's files as they go out: no in-memory copy of the model.
    const bundle = await this.store.openBundle(model.version);
    const started = this.clock.now();
    const { chunkBytes, maxInflight } = this.config;
    try {
      await publishChunks(
        this.transport,
        bundle,
        (seq) => this.topics.modelChunk(model.version, seq),
        (chunk) => ({ v: PROTOCOL_VERSION, type: 'model-chunk', version: model.version, sha256: model.sha256, ...chunk }),
        { chunkBytes, maxInflight, retain: true },
      );
    } finally {
      await bundle.close();
    }
    const manifest: ModelManifest = {
      v: PROTOCOL_VERSION,
      federation: this.config.federation,
      version: model.version,
      round: model.round,
      sha256: model.sha256,
      bytes: model.bytes,
      chunks: chunkCount(model.bytes, chunkBytes),
      chunkBytes,
      createdAt: model.createdAt,
      signature: this.signModel ? this.signModel(model.version, model.sha256) : null,
      metrics: { contributors: model.contributors, updateMetrics: model.updateMetrics },
    };
    await this.transport.publish(this.topics.modelLatest(), encodeJson(manifest), { qos: 1, retain: true });
    // Old versions' retained chunks are cleared (an empty retained payload deletes it, MQTT 3.1.1 §3.3.1.3).
    for (const v of await this.store.versions()) {
      if (v >= model.version) continue;
      const old = await this.store.get(v);
      if (!old) continue;
      const n = chunkCount(old.bytes, chunkBytes);
      for (let seq = 0; seq < n; seq++) await this.transport.publish(this.topics.modelChunk(v, seq), Buffer.alloc(0), { qos: 1, retain: true });
    }
    this.log.info({ version: model.version, bytes: model.bytes, ms: this.clock.now() - started }, 'global model published');
    if (!announce) return;
    this.emitEvent('model-published', { version: model.version, round: model.round, sha256: model.sha256, bytes: model.bytes, chunks: manifest.chunks, contributors: model.contributors, metrics: model.updateMetrics, modelDir: this.store.dir(model.version) });
  }

  /**
   * Refuse updates that move the model far more than the others (poisoned, scaled, diverged):
   * each update's change to the base is compared with the median change of the other updates.
   * Refused updates become failures of the round, with the reason in an alert event.
   */
  private async screenPoisoned(active: ActiveRound, accepted: SpooledUpdate[]): Promise<SpooledUpdate[]> {
    const { maxUpdateNormRatio, maxUpdateNorm } = this.config;
    if (maxUpdateNormRatio === null && maxUpdateNorm === null) return accepted;
    const { state, base } = active;
    const federated = base.tensors.filter((t) => active.federatedNames.includes(t.name)).map((t) => ({ name: t.name, length: t.bytes / 4 }));
    // Readers decode every encoding to float32 (and add the base back to deltas), like FedAvg's.
    const baseValues = await this.store.openValues(base.version);
    const readers = await this.spool.openReaders(state.plan.round, accepted, baseValues).catch(async (err) => {
      await baseValues.close();
      throw err;
    });
    const baseReader = await this.store.openTensorReader(base.version);
    let verdicts;
    try {
      const { norms, baseNorm } = await deltaNorms(readers, baseReader, federated);
      verdicts = screenUpdateNorms(norms, { maxNormRatio: maxUpdateNormRatio, maxNorm: maxUpdateNorm, baseNorm });
    } finally {
      await Promise.all([...readers, baseReader, baseValues].map((r) => r.close()));
    }
    for (const v of verdicts) {
      this.log.info({ round: state.plan.round, agent: v.agent, updateNorm: v.norm, referenceNorm: v.referenceNorm, accepted: v.accepted }, 'update norm screened');
      if (v.accepted) continue;
      const reason = v.reason!;
      this.counters.inc(ErrorCodes.UPDATE_NORM);
      state.recordFailureAfterAcceptance({ agent: v.agent, code: ErrorCodes.UPDATE_NORM, reason });
      this.log.warn({ round: state.plan.round, agent: v.agent, code: ErrorCodes.UPDATE_NORM }, `update of ${v.agent} refused: ${reason}`);
      this.emitEvent('alert', { severity: 'warning', code: ErrorCodes.UPDATE_NORM, agent: v.agent, round: state.plan.round, message: `update of ${v.agent} refused: ${reason}` });
    }
    return accepted.filter((u) => verdicts.find((v) => v.agent === u.agent)?.accepted);
  }

  /**
   * Average the spooled updates into the next global model, as a stream: spool files -> strategy
   * (FedAvg, block by block, decoding f16/q8/delta) -> the new version's weights file, with the
   * tensors not federated this round copied from the base. Memory stays at a few blocks whatever
   * the model's size and the number of updates.
   */
  private async aggregate(active: ActiveRound, accepted: SpooledUpdate[]): Promise<StoredModel | null> {
    const { base, state } = active;
    const federatedSpecs = base.tensors.filter((t) => active.federatedNames.includes(t.name));
    const baseHeader = await this.store.readHeader(base.version);
    const version = (await this.store.versions()).reduce((m, v) => Math.max(m, v), 0) + 1;
    const meta: ModelMeta = { ...baseHeader.header.meta, version, round: state.plan.round, createdAt: this.clock.now() };
    const baseValues = await this.store.openValues(base.version);
    let writer;
    let readers: Awaited<ReturnType<UpdateSpool['openReaders']>> = [];
    try {
      writer = await this.store.createVersion(meta, base.tensors, {
        contributors: Object.fromEntries(accepted.map((u) => [u.agent, u.sampleCount])),
        updateMetrics: Object.fromEntries(accepted.map((u) => [u.agent, u.metricsAfter])),
      });
      readers = await this.spool.openReaders(state.plan.round, accepted, baseValues);
      const builder = new ModelBuilder(writer, active.federatedNames, baseValues);
      const output = await this.strategy.aggregate({ round: state.plan.round, federated: federatedSpecs, results: readers, failures: state.failureList(), output: builder.sink });
      if (output.kind === 'keep') {
        this.log.warn({ reason: output.reason }, 'strategy kept the global model');
        await writer.abort();
        return null;
      }
      await builder.finish();
      active.record.aggregatedAt = this.clock.now();
    } catch (err) {
      await writer?.abort();
      throw err;
    } finally {
      await Promise.all(readers.map((r) => r.close()));
      await baseValues.close();
    }
    const stored = await writer.commit();
    active.record.modelStoredAt = this.clock.now();
    await this.publishModel(stored);
    active.record.modelPublishedAt = this.clock.now();
    return stored;
  }

  // ---------------------------------------------------------------- inbound

  private readonly onStatus = (m: InboundMessage): void => {
    const parsed = this.topics.parseStatus(m.topic);
    if (!parsed || m.payload.byteLength === 0) return;
    try {
      const status = decodeJson(m.payload, agentStatusSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'agent status' });
      if (status.agent !== parsed.agent) throw new FedlineError(ErrorCodes.MSG_TOPIC, `status on ${m.topic} names agent "${status.agent}"`);
      const was = this.online.has(status.agent);
      if (status.state === 'offline') this.online.delete(status.agent);
      else this.online.add(status.agent);
      if (was !== this.online.has(status.agent)) {
        this.log.info({ agent: status.agent, state: status.state }, status.state === 'offline' ? 'agent offline' : 'agent online');
        this.onlineChanged.emit('change');
      }
    } catch (err) {
      this.reject(err, m.topic, parsed.agent);
    }
  };

  private readonly onUpdateMessage = (m: InboundMessage): void => {
    const where = this.topics.parseUpdate(m.topic);
    if (!where) {
      this.reject(new FedlineError(ErrorCodes.MSG_TOPIC, `unexpected topic ${m.topic}`), m.topic, null);
      return;
    }
    let msg;
    try {
      msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'update message' });
      if (msg.round !== where.round || msg.agent !== where.agent) {
        throw new FedlineError(ErrorCodes.MSG_TOPIC, `message says round ${msg.round} from "${msg.agent}" but came on ${m.topic}`);
      }
      if (!this.config.agents.includes(where.agent)) {
        throw new FedlineError(ErrorCodes.UNKNOWN_AGENT, `agent "${where.agent}" is not a member of federation ${this.config.federation}`);
      }
    } catch (err) {
      this.reject(err, m.topic, where.agent);
      return;
    }
    const active = this.current;
    if (!active || active.state.plan.round !== msg.round || active.state.closed) {
      const err = new FedlineError(ErrorCodes.ROUND_CLOSED, `round ${msg.round} is not open${active ? ` (round ${active.state.plan.round} is)` : ''}`);
      this.reject(err, m.topic, where.agent);
      // Tell the sender once per message that asks for a verdict, so a straggler stops waiting.
      if (msg.type === 'update-done') this.sendAck(msg.round, msg.agent, { status: 'rejected', upload: msg.upload, sha256: msg.sha256, code: err.code, reason: err.message });
      return;
    }
    if (!active.state.isSelected(msg.agent)) {
      const err = new FedlineError(ErrorCodes.NOT_SELECTED, `agent "${msg.agent}" was not selected for round ${msg.round}`);
      this.reject(err, m.topic, msg.agent);
      if (msg.type === 'update-done') this.sendAck(msg.round, msg.agent, { status: 'rejected', upload: msg.upload, sha256: msg.sha256, code: err.code, reason: err.message });
      return;
    }
    try {
      if (msg.type === 'eval') this.handleEval(active, msg);
      else if (msg.type === 'update-chunk') this.handleChunk(active, msg, m.topic);
      else this.handleDone(active, msg);
    } catch (err) {
      this.reject(err, m.topic, msg.agent);
    }
  };

  private handleEval(active: ActiveRound, msg: EvalReportMsg): void {
    if (msg.baseVersion !== active.base.version) {
      throw new FedlineError(ErrorCodes.WRONG_BASE, `evaluation of version ${msg.baseVersion}, but round ${msg.round} is based on version ${active.base.version}`);
    }
    if (msg.metrics.confusion.length !== active.base.classes.length) {
      throw new FedlineError(ErrorCodes.MSG_SCHEMA, `evaluation has a ${msg.metrics.confusion.length}-class confusion matrix; the federation has ${active.base.classes.length} classes`);
    }
    if (!active.state.recordEval(msg.agent, msg.metrics)) return;
    active.record.baseMetrics[msg.agent] = msg.metrics;
    active.record.bytesDown += msg.downloadedBytes;
    this.store.recordMetrics(msg.baseVersion, msg.agent, msg.metrics).catch((err: Error) => this.log.warn({ err: err.message }, 'could not record metrics'));
    this.log.info({ round: msg.round, agent: msg.agent, version: msg.baseVersion, accuracy: msg.metrics.accuracy }, 'global model evaluated by agent');
    this.saveJournal().catch(() => undefined);
    this.checkClose(active);
  }

  private handleChunk(active: ActiveRound, msg: UpdateChunkMsg, topic: string): void {
    const { agent, upload } = msg;
    const { round } = active.state.plan;
    active.record.bytesUp += msg.data.byteLength;
    active.record.lastChunkAt = this.clock.now();
    const accepted = active.state.acceptedUpdate(agent) as SpooledUpdate | undefined;
    if (accepted) {
      if (accepted.upload === upload) {
        this.counters.inc('duplicate-chunk');
        return;
      }
      throw new FedlineError(ErrorCodes.DUPLICATE_UPDATE, `agent "${agent}" already delivered an update for round ${msg.round}; a second one is refused`);
    }
    if (active.verifying.get(agent) === upload) {
      this.counters.inc('duplicate-chunk');
      return;
    }
    if (active.refused.get(agent)?.upload === upload) {
      this.counters.inc('chunk-of-refused-update');
      return;
    }
    if (msg.chunkBytes !== this.config.chunkBytes) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunks of ${msg.chunkBytes} bytes; the round asks for ${this.config.chunkBytes}`);
    }
    let r = active.receivers.get(agent);
    if (!r || r.upload !== upload || !r.matches(msg)) {
      if (r) {
        this.log.warn({ agent, old: r.upload, new: upload }, 'a new update upload replaces an incomplete one');
        r.discard();
        active.receivers.delete(agent);
      }
      r = new UpdateReceiver({
        agent,
        upload,
        path: this.spool.partPath(round, agent, upload),
        total: msg.total,
        bundleBytes: msg.bundleBytes,
        chunkBytes: msg.chunkBytes,
        maxBundleBytes: this.config.maxUpdateBytes,
        expect: {
          round,
          agent,
          baseVersion: active.base.version,
          tensors: active.base.tensors.filter((t) => active.federatedNames.includes(t.name)),
          dtype: dtypeOf(this.config.encoding),
          delta: this.config.delta,
          maxSamples: sampleLimit(agent, { maxSamplesPerAgent: this.config.maxSamplesPerAgent, registeredSamples: this.config.registeredSamples, registeredTolerance: this.config.registeredSamplesTolerance }),
        },
      });
      active.receivers.set(agent, r);
    }
    if (r.accept(msg) === 'duplicate') this.counters.inc('duplicate-chunk');
    else this.counters.inc('update-chunk');
    if (r.failure) {
      // The header or a value is already known to be bad: refuse now, the agent stops sending.
      active.receivers.delete(agent);
      r.discard();
      this.refuse(active, agent, upload, null, r.failure, topic);
      this.regrantWindow(active);
      return;
    }
    if (this.config.windowChunks > 0) {
      const window = this.sharedWindow(active);
      const stored = r.progressDue(Math.max(1, Math.floor(window / 4)));
      if (stored !== null) this.sendAck(round, agent, { status: 'progress', upload, stored, window });
    }
    if (r.ready) this.startFinish(active, r, topic);
  }

  /**
   * One window shared by the uploads in progress: the broker holds at most about windowChunks
   * chunks for this aggregator, however many agents send at once.
   */
  private sharedWindow(active: ActiveRound): number {
    return Math.max(MIN_WINDOW_CHUNKS, Math.floor(this.config.windowChunks / Math.max(1, active.receivers.size)));
  }

  /**
   * An upload ended: the others' share of the window grows. Tell them now. Progress is reported
   * every quarter window, so when the window grows (ten senders down to one: 25 -> 256 chunks) an
   * agent that has sent its whole old share (25) never reaches the new report interval (64): it
   * would wait for credit that no chunk of it can bring.
   */
  private regrantWindow(active: ActiveRound): void {
    if (this.config.windowChunks <= 0 || active.receivers.size === 0) return;
    const window = this.sharedWindow(active);
    for (const r of active.receivers.values()) {
      const stored = r.progressNow();
      if (stored !== null) this.sendAck(active.state.plan.round, r.agent, { status: 'progress', upload: r.upload, stored, window });
    }
  }

  private startFinish(active: ActiveRound, r: UpdateReceiver, topic: string): void {
    active.receivers.delete(r.agent);
    this.regrantWindow(active);
    active.verifying.set(r.agent, r.upload);
    this.finishUpdate(active, r, topic).finally(() => {
      if (active.verifying.get(r.agent) === r.upload) active.verifying.delete(r.agent);
    });
  }

  private async finishUpdate(active: ActiveRound, r: UpdateReceiver, topic: string): Promise<void> {
    const { round } = active.state.plan;
    const { agent, upload } = r;
    try {
      const { header, payloadStart, sha256 } = await r.finish();
      const meta = header.meta;
      const info: SpooledUpdate = {
        agent,
        upload,
        sampleCount: meta.sampleCount,
        bytes: r.bundleBytes,
        sha256,
        metricsBefore: meta.metricsBefore,
        metricsAfter: meta.metricsAfter,
        trainMs: meta.trainMs,
        delta: meta.delta,
        payloadStart,
        tensors: header.tensors,
        acceptedAt: this.clock.now(),
      };
      if (active.state.closed) {
        r.discard();
        return;
      }
      await this.spool.commit(round, info, r.path);
      if (active.state.closed) return;
      active.state.recordAccepted(info);
      active.refused.delete(agent);
      active.record.acceptedAt![agent] = info.acceptedAt;
      this.counters.inc('accepted-update');
      this.log.info({ round, agent, samples: meta.sampleCount, bytes: r.bundleBytes }, 'update accepted');
      this.sendAck(round, agent, { status: 'accepted', upload, sha256 });
      this.checkClose(active);
    } catch (err) {
      r.discard();
      this.refuse(active, agent, upload, r.expectedSha, err, topic);
    }
  }

  /** An upload is refused: log, count, record the failure, alert, and tell the agent. */
  private refuse(active: ActiveRound, agent: string, upload: string, sha256: string | null, err: unknown, topic: string): void {
    const { round } = active.state.plan;
    const { code, message } = describeError(err);
    this.reject(err, topic, agent);
    if (active.state.closed) return;
    active.refused.set(agent, { upload, sha256, code, reason: message });
    active.state.recordFailure({ agent, code, reason: message });
    this.emitEvent('alert', { severity: 'warning', code, agent, round, message: `update of ${agent} rejected: ${message}` });
    this.sendAck(round, agent, { status: 'rejected', upload, sha256, code, reason: message });
    this.checkClose(active);
  }

  private handleDone(active: ActiveRound, msg: UpdateDoneMsg): void {
    const { agent, round, upload, sha256 } = msg;
    const accepted = active.state.acceptedUpdate(agent) as SpooledUpdate | undefined;
    if (accepted) {
      if (accepted.upload === upload) this.sendAck(round, agent, { status: 'accepted', upload, sha256 });
      else this.sendAck(round, agent, { status: 'rejected', upload, sha256, code: ErrorCodes.DUPLICATE_UPDATE, reason: 'another update of this agent was already accepted for this round' });
      return;
    }
    if (active.verifying.get(agent) === upload) return; // the verdict follows
    const refused = active.refused.get(agent);
    if (refused && refused.upload === upload) {
      this.sendAck(round, agent, { status: 'rejected', upload, sha256, code: refused.code, reason: refused.reason });
      return;
    }
    const r = active.receivers.get(agent);
    if (r && r.upload === upload && r.matches({ ...msg, chunkBytes: this.config.chunkBytes })) {
      r.expectedSha = sha256;
      if (r.ready) {
        this.startFinish(active, r, this.topics.update(round, agent));
        return;
      }
      this.sendAck(round, agent, { status: 'incomplete', upload, sha256, missing: r.missing(MAX_MISSING_LISTED) });
      return;
    }
    this.sendAck(round, agent, { status: 'incomplete', upload, sha256, missing: Array.from({ length: Math.min(msg.total, MAX_MISSING_LISTED) }, (_, i) => i) });
  }

  private sendAck(round: number, agent: string, ack: Partial<AckMsg> & Pick<AckMsg, 'status'>): void {
    const msg: AckMsg = { v: PROTOCOL_VERSION, type: 'ack', round, agent, upload: null, sha256: null, code: null, reason: null, missing: [], stored: 0, window: 0, ...ack };
    this.transport.publish(this.topics.ack(round, agent), packMsg(msg), { qos: 1 }).catch((err: Error) => this.log.warn({ err: err.message, agent, round }, 'could not send ack'));
  }

  /** Log, count and drop. Never throws: a bad message must not stop the service. */
  private reject(err: unknown, topic: string, agent: string | null): void {
    const { code, message } = describeError(err);
    this.counters.inc(code);
    this.log.warn({ topic, agent, code }, message);
    this.emit('rejected', { topic, agent, code, message });
  }

  // ---------------------------------------------------------------- journal

  private async loadJournal(): Promise<void> {
    try {
      const j = JSON.parse(await readFile(this.journalPath, 'utf8')) as Journal;
      if (j.federation !== this.config.federation) throw new Error(`journal belongs to federation ${j.federation}`);
      // Journals written before trainRoundsDone existed: count what they hold.
      j.trainRoundsDone ??= j.rounds.filter((r) => r.kind === 'train' && r.outcome !== null).length;
      this.journal = j;
      this.log.info({ rounds: j.rounds.length, complete: j.complete }, 'journal loaded');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new FedlineError(ErrorCodes.MODEL_STORE, `cannot read the journal ${this.journalPath}: ${(err as Error).message}`);
    }
  }

  private async spillOldRounds(): Promise<void> {
    const excess = this.journal.rounds.length - JOURNAL_KEEP_ROUNDS;
    if (excess <= 0) return;
    const old = this.journal.rounds.slice(0, excess);
    await appendFile(join(this.config.stateDir, 'history.jsonl'), old.map((r) => JSON.stringify(r)).join('\n') + '\n');
    this.journal.rounds = this.journal.rounds.slice(excess);
  }

  /** Writes are serialised so that an older snapshot never lands after a newer one. */
  private saveJournal(): Promise<void> {
    const snapshot = JSON.parse(JSON.stringify(this.journal)) as Journal;
    const next = this.journalChain.then(() => writeJsonAtomic(this.journalPath, snapshot));
    this.journalChain = next.catch(() => undefined);
    return next;
  }
}
