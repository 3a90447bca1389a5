import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeJson } from '../shared/protocol/wire-codec.js';
import type { Counters } from '../shared/util/counters.js';
import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { EventSink } from '../shared/transport/event-publisher.js';
import { writeJsonAtomic } from '../shared/util/fs-atomic.js';
import type { Logger } from '../shared/util/logger.js';
import {
  commandSchema,
  commandVerbs,
  modelCommandVerbs,
  type Command,
  type ControlVerb,
  type FederationRunState,
  type ModelCommandVerb,
} from '../shared/protocol/mes.js';
import { modelManifestSchema, SUPPORTED_VERSIONS, type ModelManifest } from '../shared/protocol/messages.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { InboundMessage, Transport } from '../shared/transport/transport.js';
import { FederationControl } from './federation-control.js';

export interface MesCommandsOptions {
  transport: Transport;
  topics: Topics;
  stateDir: string;
  log: Logger;
  emitEvent: EventSink;
  counters: Counters;
  /** Start rounds at launch (true) or wait for `<root>/cmd/start` (false). */
  autoStart: boolean;
  /** `stop`: close the open round, if any, without aggregation. */
  onStop: (reason: string) => void;
  /** `release` / `rollback`: the model registry's answer (aggregator/release-manager.ts). */
  onModelCommand: (verb: ModelCommandVerb, command: Command) => Promise<{ status: 'accepted' | 'rejected'; detail: string }>;
}

/**
 * The aggregator's side of the MES commands on `<root>/cmd/<verb>` (JSON, shared/protocol/mes.ts):
 * start, pause, resume, stop change how rounds run (FederationControl, kept in
 * <stateDir>/control.json across restarts); model-manifest answers with the current global
 * model's manifest as a `model-manifest` event; release and rollback change the released model
 * (aggregator/release-manager.ts), whatever the run state. Every command gets a `command-result` event.
 * The broker's ACL decides who may send commands; malformed, retained or unknown commands are
 * logged, counted and answered `rejected`.
 */
export class MesCommands {
  private readonly o: MesCommandsOptions;
  private control: FederationControl;
  private readonly changes = new EventEmitter();
  private latest: ModelManifest | null = null;

  constructor(o: MesCommandsOptions) {
    this.o = o;
    this.control = new FederationControl(o.autoStart ? 'running' : 'stopped');
  }

  get state(): FederationRunState {
    return this.control.state;
  }

  private get file(): string {
    return join(this.o.stateDir, 'control.json');
  }

  async start(): Promise<void> {
    try {
      const saved = JSON.parse(await readFile(this.file, 'utf8')) as { state?: FederationRunState };
      // A stop or pause outlives a restart of the service; a finished federation starts over as configured.
      if (saved.state === 'paused' || saved.state === 'stopped' || saved.state === 'running') this.control = new FederationControl(saved.state);
    } catch {
      // never commanded: as configured
    }
    await this.o.transport.subscribe(this.o.topics.modelLatest(), this.onManifest);
    await this.o.transport.subscribe(this.o.topics.commandsAll(), this.onCommand);
    this.o.log.info({ state: this.control.state }, 'listening for MES commands');
  }

  async stop(): Promise<void> {
    await this.o.transport.unsubscribe(this.o.topics.commandsAll(), this.onCommand).catch(() => undefined);
    await this.o.transport.unsubscribe(this.o.topics.modelLatest(), this.onManifest).catch(() => undefined);
    this.changes.emit('change');
  }

  markComplete(): void {
    this.control.complete();
    this.changes.emit('change');
  }

  /** Resolves when rounds may run (state running), or when `until` resolves (service stopping). */
  async waitUntilRunning(until: Promise<void>, onWait: (state: FederationRunState) => void): Promise<void> {
    let told = false;
    while (this.control.state === 'paused' || this.control.state === 'stopped') {
      if (!told) {
        told = true;
        onWait(this.control.state);
      }
      const stopped = await Promise.race([new Promise<false>((resolve) => this.changes.once('change', () => resolve(false))), until.then(() => true)]);
      if (stopped) return;
    }
  }

  private readonly onManifest = (m: InboundMessage): void => {
    if (m.payload.byteLength === 0) return;
    try {
      this.latest = decodeJson(m.payload, modelManifestSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'model manifest' });
    } catch (err) {
      this.o.log.warn({ topic: m.topic, err: describeError(err).message }, 'unreadable model manifest');
    }
  };

  private readonly onCommand = (m: InboundMessage): void => {
    const parsed = this.o.topics.parseCommand(m.topic);
    const verb = parsed?.verb ?? m.topic;
    let command: Command | null = null;
    try {
      if (m.retain)
        throw new FedlineError(
          ErrorCodes.COMMAND,
          `retained command on ${m.topic} ignored: commands must not be retained (an old one would run again at every restart)`,
        );
      command = decodeJson(m.payload, commandSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: `${verb} command` });
      if (!parsed || !(commandVerbs as readonly string[]).includes(parsed.verb)) {
        throw new FedlineError(ErrorCodes.COMMAND, `unknown command "${verb}" on ${m.topic}; known: ${commandVerbs.join(', ')}`);
      }
    } catch (err) {
      const { code, message } = describeError(err);
      this.o.counters.inc(code);
      this.o.log.warn({ topic: m.topic, code }, message);
      if (!m.retain) this.result(verb, command?.requestId ?? null, 'rejected', message);
      return;
    }
    if ((modelCommandVerbs as readonly string[]).includes(verb)) {
      this.modelCommand(verb as ModelCommandVerb, command);
      return;
    }
    const v = verb as ControlVerb;
    const outcome = this.control.apply(v);
    this.o.log.info(
      { verb: v, by: command.by, reason: command.reason, requestId: command.requestId, status: outcome.status, state: outcome.to },
      `MES command ${v}: ${outcome.detail}`,
    );
    if (v === 'model-manifest') {
      this.o.emitEvent('model-manifest', { requestId: command.requestId ?? null, manifest: this.latest });
      return;
    }
    if (outcome.status === 'rejected') this.o.counters.inc(ErrorCodes.COMMAND);
    if (outcome.from !== outcome.to) {
      writeJsonAtomic(this.file, { state: outcome.to, by: command.by ?? null, reason: command.reason ?? null, at: Date.now() }).catch((err: Error) =>
        this.o.log.warn({ err: err.message, file: this.file }, 'could not save the federation run state'),
      );
      if (outcome.to === 'stopped')
        this.o.onStop(`stopped by MES command${command.by ? ` from ${command.by}` : ''}${command.reason ? ` (${command.reason})` : ''}`);
      this.changes.emit('change');
    }
    this.result(v, command.requestId ?? null, outcome.status, outcome.detail);
  };

  private modelCommand(verb: ModelCommandVerb, command: Command): void {
    const requestId = command.requestId ?? null;
    this.o
      .onModelCommand(verb, command)
      .catch((err) => ({ status: 'rejected' as const, detail: `${verb} failed: ${describeError(err).message}` }))
      .then((outcome) => {
        if (outcome.status === 'rejected') this.o.counters.inc(ErrorCodes.COMMAND);
        this.o.log.info(
          { verb, by: command.by, reason: command.reason, requestId, version: command.version ?? null, status: outcome.status },
          `MES command ${verb}: ${outcome.detail}`,
        );
        this.result(verb, requestId, outcome.status, outcome.detail);
      });
  }

  private result(verb: string, requestId: string | null, status: 'accepted' | 'rejected', detail: string): void {
    this.o.emitEvent('command-result', { verb, requestId, status, detail, by: 'aggregator', federationState: this.control.state });
  }
}
