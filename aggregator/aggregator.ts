import { batchNormChannels, checkBatchNormConfig } from './statistics-round.js';
import { EventEmitter } from 'node:events';
import { systemClock, type Clock, deferred } from '../shared/util/async.js';
import { createEventPublisher } from '../shared/transport/event-publisher.js';
import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { Counters } from '../shared/util/counters.js';
import { createTopics, defaultRoot } from '../shared/protocol/topics.js';
import { decodeBundle, sha256Hex } from '../shared/bundle/tensor-bundle.js';
import { modelMetaSchema, type ModelMeta } from '../shared/protocol/messages.js';
import type { Transport } from '../shared/transport/transport.js';
import { createAckSender, createReject, type AggregatorContext, type Config } from './aggregator-context.js';
import { loadGlobalModel } from './load-global-model.js';
import { MesCommands } from './mes-commands.js';
import { ModelPublisher, type ModelSigner } from './model-publisher.js';
import type { ModelStore, StoredModel } from './model-store.js';
import { ReleaseManager, type ReleaseSigner } from './release-manager.js';
import { RoundJournal, type RoundRecord } from './round-journal.js';
import { clearStaleRetained } from './retained-cleanup.js';
import { RoundRunner, type RoundDrive } from './round-runner.js';
import type { RoundKind } from './round-state.js';
import { AgentPresence } from './status-handler.js';
import type { Strategy } from './strategy.js';
import { createStrategy } from './strategy-registry.js';
import { createUpdateInbound } from './update-inbound.js';
import type { UpdateSpool } from './update-spool.js';

// demo/, bench/ and experiment/ import the journal's types from here.
export type { Journal, RoundRecord } from './round-journal.js';

export interface AggregatorDeps {
  transport: Transport;
  store: ModelStore;
  spool: UpdateSpool;
  /** Builds the initial global model bundle (version 0) when the store is empty. */
  initialModel: () => Promise<Uint8Array>;
  /** Signs a model (version, SHA-256) for the agents to verify; absent: models go unsigned. */
  signModel?: ModelSigner;
  /** Signs the released manifest (`<root>/model/released`); absent: it goes unsigned. */
  signRelease?: ReleaseSigner;
  /** Default: the one the config's `strategy` names (aggregator/strategy-registry.ts). */
  strategy?: Strategy;
  logger: Logger;
  clock?: Clock;
}

export interface FederationResult {
  finalVersion: number;
  reason: string;
  rounds: RoundRecord[];
}

/** What a driven round gave: its journal record and, for a training round, the aggregate. */
export interface DrivenRoundResult {
  record: RoundRecord;
  aggregate: RoundDrive['result'] | null;
}

/** `bundle` as a version of `store`: saved when new, reused when the same bytes are there already; another model under its version number is refused. */
async function adoptBase(store: ModelStore, bundle: Uint8Array): Promise<StoredModel> {
  const sha256 = sha256Hex(bundle);
  const { version } = decodeBundle<ModelMeta>(bundle, modelMetaSchema).header.meta;
  const existing = await store.get(version);
  if (!existing) return store.save(bundle);
  if (existing.sha256 === sha256) return existing;
  throw new FedlineError(
    ErrorCodes.MODEL_STORE,
    `model version ${existing.version} here (sha256 ${existing.sha256.slice(0, 12)}…) differs from the one given (sha256 ${sha256.slice(0, 12)}…): another federation run upstream? Move ${store.dir(existing.version)} aside`,
  );
}

/** How long stop() waits for the run loop to record the round it closed. */
const STOP_WAIT_MS = 10_000;

/**
 * The aggregator service: announce a round (retained) -> collect chunked updates -> verify ->
 * spool -> close -> aggregate (the Strategy) -> store -> publish the new global model -> next
 * round. This class wires the units and runs the federation loop:
 *   inbound    status-handler.ts (presence), update-inbound.ts (eval reports, update chunks, update-done as named steps)
 *   uploads    upload-collector.ts (per-upload state, flow-control credit)
 *   rounds     round-runner.ts (one round), round-state.ts (its decisions), round-aggregation.ts
 *   strategy   strategy.ts (the seam), fedavg-strategy.ts, norm-screen.ts, strategy-registry.ts
 *   models     model-publisher.ts (retained model and announcements), load-global-model.ts
 *   state      round-journal.ts (journal.json, history.jsonl), update-spool.ts, model-store.ts, version-writer.ts
 *   release    release-manager.ts (candidates, gates, released model), release-policy.ts, model-registry.ts
 *   MES        mes-commands.ts (start, pause, resume, stop, model-manifest, release, rollback)
 */
export class Aggregator extends EventEmitter {
  readonly counters = new Counters();
  private readonly ctx: AggregatorContext;
  private readonly initialModel: () => Promise<Uint8Array>;
  private readonly journal: RoundJournal;
  private readonly presence: AgentPresence;
  private readonly publisher: ModelPublisher;
  private readonly runner: RoundRunner;
  private readonly commands: MesCommands;
  private readonly release: ReleaseManager;
  private readonly onUpdateMessage: ReturnType<typeof createUpdateInbound>;
  private stopped = false;
  private readonly stopSignal = deferred<void>();
  /** The run loop, once started (settles when run() ends, whatever the outcome). */
  private running: Promise<void> | null = null;

  constructor(config: Config, deps: AggregatorDeps) {
    super();
    const { transport } = deps;
    const log = deps.logger.child({ module: 'aggregator' });
    const topics = createTopics(config.topicRoot ?? defaultRoot(config.federation));
    const emitEvent = createEventPublisher(transport, topics, config.federation, log, (_type, event) => this.emit('event', event));
    const ctx: AggregatorContext = {
      config,
      transport,
      topics,
      store: deps.store,
      spool: deps.spool,
      clock: deps.clock ?? systemClock,
      log,
      counters: this.counters,
      emitEvent,
      reject: createReject(this.counters, log, this),
      sendAck: createAckSender(transport, topics, log),
    };
    this.ctx = ctx;
    this.initialModel = deps.initialModel;
    this.journal = new RoundJournal(config.federation, config.stateDir, log);
    this.presence = new AgentPresence(ctx);
    this.publisher = new ModelPublisher(ctx, deps.signModel ?? null, () => this.journal.data.runId);
    this.stopSignal.promise.catch(() => undefined);
    this.release = new ReleaseManager(ctx, this.publisher, deps.signRelease ?? null);
    this.commands = new MesCommands({
      transport,
      topics,
      stateDir: config.stateDir,
      log: log.child({ module: 'mes-commands' }),
      emitEvent,
      counters: this.counters,
      autoStart: config.autoStart,
      onStop: (reason) => this.runner.closeOpenRound(reason),
      onModelCommand: (verb, command) => this.release.command(verb, command),
    });
    checkBatchNormConfig(config);
    this.runner = new RoundRunner({
      ctx,
      journal: this.journal,
      presence: this.presence,
      commands: this.commands,
      publisher: this.publisher,
      release: this.release,
      strategy: deps.strategy ?? createStrategy(config, log),
      stopSignal: this.stopSignal.promise,
      isStopped: () => this.stopped,
    });
    this.onUpdateMessage = createUpdateInbound({ ctx, current: () => this.runner.current(), journal: this.journal });
  }

  get journalPath(): string {
    return this.journal.path;
  }

  history(): readonly RoundRecord[] {
    return this.journal.data.rounds;
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

  /** Journal, inbound subscriptions, reconnect handling and MES commands: what both kinds of run need before a round. */
  private async setUp(): Promise<void> {
    const { ctx, journal, runner } = this;
    const { transport, topics } = ctx;
    await journal.load();
    await transport.subscribe(topics.statusAll(), this.presence.onStatus);
    // Borrowed: update chunks are handed over as views of the receive buffer (no allocation per chunk);
    // every step of the update inbound is synchronous and copies what it keeps.
    await transport.subscribe(topics.updatesAll(), this.onUpdateMessage, { borrowed: true });
    // Connected already: every later 'connect' is a reconnect.
    transport.on('connect', () => {
      if (this.stopped) return;
      void this.publisher
        .republishRetained(runner.global)
        .then(() => this.release.publish().catch((err) => ctx.log.warn({ err: describeError(err).message }, 'could not republish the released model')));
    });
    await this.commands.start();
  }

  private async runFederation(): Promise<FederationResult> {
    const { ctx, journal, runner } = this;
    const { config } = ctx;
    await this.setUp();
    runner.global = await loadGlobalModel(ctx, this.initialModel);
    journal.data.currentVersion = runner.global.version;
    await this.release.load();
    // An earlier run's retained announcement and model chunks must not reach this run's agents.
    await clearStaleRetained(ctx, journal.data.runId, runner.global);
    await this.publisher.publishModel(runner.global);
    await this.release.publish();

    let reason = `${config.rounds} rounds done`;
    const noteOutcome = (outcome: string) => {
      if (outcome === 'target-reached') reason = 'target accuracy reached';
    };
    const unfinished = journal.data.rounds.find((r) => r.outcome === null);
    if (journal.data.complete) {
      reason = 'federation already complete (journal)';
    } else {
      if (unfinished) noteOutcome(await runner.runRound(unfinished.kind, unfinished));
      // pooled-statistics: a version made by averaging gets its BN statistics from the sites before anything uses it.
      const statisticsDue = () => {
        const last = journal.data.rounds.at(-1);
        return config.batchNorm === 'pooled-statistics' && last?.kind === 'train' && last.outcome === 'aggregate' && hasBatchNorm(runner.global!);
      };
      for (;;) {
        if (!this.stopped && statisticsDue()) await runner.runRound('statistics');
        if (this.stopped || reason === 'target accuracy reached' || journal.data.trainRoundsDone >= config.rounds) break;
        noteOutcome(await runner.runRound('train'));
      }
      const last = journal.data.rounds.at(-1);
      const lastEvaluatedCurrent = last && (last.outcome === 'target-reached' || (last.kind === 'evaluate' && last.baseVersion === runner.global.version));
      if (!this.stopped && config.evaluateFinalModel && !lastEvaluatedCurrent) await runner.runRound('evaluate');
      if (this.stopped) reason = 'stopped';
    }
    const final = runner.global;
    if (!this.stopped) {
      journal.data.complete = true;
      journal.data.finalVersion = final.version;
      await journal.save();
      await this.publisher.announce(runner.completionAnnouncement());
      this.commands.markComplete();
      ctx.emitEvent('federation-completed', {
        finalVersion: final.version,
        reason,
        rounds: journal.data.rounds.length,
        modelDir: ctx.store.dir(final.version),
      });
      ctx.log.info({ finalVersion: final.version, reason }, 'federation complete');
    }
    return { finalVersion: final.version, reason, rounds: journal.data.rounds };
  }

  /**
   * Rounds driven from outside, one at a time, instead of run(): a plant under headquarters
   * (plant/plant-trainer.ts). Call once before the first runDrivenRound.
   */
  async openDriven(): Promise<void> {
    await this.setUp();
    await this.release.load();
    this.running = Promise.resolve();
  }

  /**
   * One round on `base` (a model bundle made elsewhere, stored and published here byte for byte,
   * so it keeps its version and SHA-256) with the given task. A training round returns its
   * aggregate, which is not stored as a version here; an evaluation round returns the sites' metrics only.
   */
  async runDrivenRound(kind: RoundKind, base: Uint8Array, drive: Omit<RoundDrive, 'result'>): Promise<DrivenRoundResult> {
    const { ctx, runner, journal } = this;
    const stored = await adoptBase(ctx.store, base);
    if (runner.global?.version !== stored.version || runner.global.sha256 !== stored.sha256) {
      if (!runner.global) await clearStaleRetained(ctx, journal.data.runId, stored);
      runner.global = stored;
      journal.data.currentVersion = stored.version;
      await this.publisher.publishModel(stored);
      await this.release.onNewVersion(stored);
    }
    const roundDrive: RoundDrive = { ...drive };
    const outcome = await runner.runRound(kind, undefined, roundDrive);
    if (drive.signal.aborted) throw new FedlineError(ErrorCodes.ABORTED, `plant round ended: ${describeError(drive.signal.reason).message}`);
    const record = journal.data.rounds.at(-1)!;
    if (kind === 'train' && !roundDrive.result)
      throw new FedlineError(
        ErrorCodes.PLANT_ROUND_EMPTY,
        `round ${record.round} ended without an aggregate (${outcome}: ${record.reason ?? 'no reason given'})`,
      );
    return { record, aggregate: roundDrive.result ?? null };
  }

  /** Stop after the current step; the journal lets a later start continue. */
  async stop(): Promise<void> {
    const { transport, topics } = this.ctx;
    this.stopped = true;
    this.stopSignal.resolve();
    this.runner.closeOpenRound('aggregator stopping');
    await transport.unsubscribe(topics.updatesAll(), this.onUpdateMessage).catch(() => undefined);
    await transport.unsubscribe(topics.statusAll(), this.presence.onStatus).catch(() => undefined);
    await this.commands.stop();
    // Let the run loop record the closed round before the caller closes the transport or removes
    // the state folder (bounded: a step that does not notice the stop must not hold it up).
    if (this.running) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.running, new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_WAIT_MS)))]);
      clearTimeout(timer);
    }
    await this.journal.flushed();
  }
}

const hasBatchNorm = (model: StoredModel): boolean => batchNormChannels(model).size > 0;
