import { readFile } from 'node:fs/promises';
import { decodeJson } from '../../../shared/protocol/wire-codec.js';
import { writeJsonAtomic } from '../../../shared/util/fs-atomic.js';
import type { Logger } from '../../../shared/util/logger.js';
import { commandSchema, type Command } from '../../../shared/protocol/mes.js';
import { SUPPORTED_VERSIONS } from '../../../shared/protocol/messages.js';
import type { Topics } from '../../../shared/protocol/topics.js';
import type { InboundMessage, Transport } from '../../../shared/transport/transport.js';
import type { SourceCallbacks, TriggerSource } from '../source.js';

export interface ManualSourceOptions {
  transport: Transport;
  topics: Topics;
  agentId: string;
  /** State before any command was ever received. */
  initially: 'open' | 'closed';
  /** Where the last command's effect is kept across restarts (JSON). */
  stateFile: string;
  log: Logger;
  /** A command this agent acted on (for a command-result event). */
  onCommand?: (verb: 'pause' | 'resume', command: Command) => void;
  /** A malformed command: logged and counted by the caller. */
  onReject?: (err: unknown, topic: string) => void;
}

interface Persisted {
  open: boolean;
  by: string | null;
  reason: string | null;
  at: number;
}

/**
 * Operator / MES commands: `<root>/cmd/pause` closes the window, `<root>/cmd/resume` opens it
 * (only for the agents listed in `agents`, when the command names some). The state survives a
 * restart: an agent paused for maintenance stays paused until someone resumes it.
 */
export class ManualTriggerSource implements TriggerSource {
  readonly id = 'manual';
  private readonly o: ManualSourceOptions;
  private callbacks: SourceCallbacks | null = null;
  private state: Persisted;
  private writeChain: Promise<void> = Promise.resolve();

  constructor(options: ManualSourceOptions) {
    this.o = options;
    this.state = { open: options.initially === 'open', by: null, reason: null, at: 0 };
  }

  async start(callbacks: SourceCallbacks): Promise<void> {
    this.callbacks = callbacks;
    try {
      const saved = JSON.parse(await readFile(this.o.stateFile, 'utf8')) as Persisted;
      if (typeof saved.open === 'boolean') this.state = saved;
    } catch {
      // no command received yet: the configured initial state
    }
    this.report();
    await this.o.transport.subscribe(this.o.topics.command('pause'), this.onMessage);
    await this.o.transport.subscribe(this.o.topics.command('resume'), this.onMessage);
  }

  async stop(): Promise<void> {
    this.callbacks = null;
    await this.o.transport.unsubscribe(this.o.topics.command('pause'), this.onMessage).catch(() => undefined);
    await this.o.transport.unsubscribe(this.o.topics.command('resume'), this.onMessage).catch(() => undefined);
    await this.writeChain;
  }

  openNotBefore(now: number): number | null {
    return this.state.open ? now : null;
  }

  private report(): void {
    const s = this.state;
    const who = [s.by ? `by ${s.by}` : null, s.reason ? `(${s.reason})` : null].filter(Boolean).join(' ');
    const detail =
      s.at === 0
        ? `${s.open ? 'open' : 'closed'} (initial state; send ${this.o.topics.command(s.open ? 'pause' : 'resume')} to change)`
        : `${s.open ? 'resumed' : 'paused'} by command${who ? ` ${who}` : ''} at ${new Date(s.at).toISOString()}`;
    this.callbacks?.update({ state: s.open ? 'open' : 'closed', detail });
  }

  private readonly onMessage = (m: InboundMessage): void => {
    if (m.retain) return; // a command is an instruction now, never a retained leftover
    const parsed = this.o.topics.parseCommand(m.topic);
    if (!parsed || (parsed.verb !== 'pause' && parsed.verb !== 'resume')) return;
    let command: Command;
    try {
      command = decodeJson(m.payload, commandSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: `${parsed.verb} command` });
    } catch (err) {
      this.o.onReject?.(err, m.topic);
      return;
    }
    if (command.agents && !command.agents.includes(this.o.agentId)) return;
    const verb = parsed.verb;
    this.state = { open: verb === 'resume', by: command.by ?? null, reason: command.reason ?? null, at: Date.now() };
    this.o.log.info({ verb, by: command.by, reason: command.reason }, `training ${verb === 'pause' ? 'paused' : 'resumed'} by command`);
    const snapshot = this.state;
    this.writeChain = this.writeChain
      .then(() => writeJsonAtomic(this.o.stateFile, snapshot))
      .catch((err: Error) => this.o.log.warn({ err: err.message, file: this.o.stateFile }, 'could not save the manual window state'));
    this.report();
    this.o.onCommand?.(verb, command);
  };
}
