import { EventEmitter } from 'node:events';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { agentStatusSchema, SUPPORTED_VERSIONS, type AgentStatus } from '../shared/protocol/messages.js';
import { decodeJson } from '../shared/protocol/wire-codec.js';
import type { InboundMessage } from '../shared/transport/transport.js';
import type { AggregatorContext } from './aggregator-context.js';
import { runSteps, type Step } from './inbound-steps.js';

interface StatusMessage {
  m: InboundMessage;
  /** The agent the topic names. */
  agent?: string;
  status?: AgentStatus;
}

/**
 * Which agents are online, from their retained status messages (`<root>/status/<agent>`; the
 * broker publishes an agent's last will, offline, when its connection drops). Rounds select from
 * the agents online.
 */
export class AgentPresence {
  private readonly ctx: AggregatorContext;
  private readonly online = new Set<string>();
  private readonly changed = new EventEmitter();
  private readonly watched = new WeakSet<Promise<void>>();
  private readonly steps: readonly Step<StatusMessage>[] = [
    {
      name: 'parse-topic',
      run: (s) => {
        const parsed = this.ctx.topics.parseStatus(s.m.topic);
        // An empty retained payload clears a status: nothing to say.
        if (!parsed || s.m.payload.byteLength === 0) return 'done';
        s.agent = parsed.agent;
      },
    },
    {
      name: 'decode',
      run: (s) => {
        s.status = decodeJson(s.m.payload, agentStatusSchema, SUPPORTED_VERSIONS, { topic: s.m.topic, what: 'agent status' });
      },
    },
    {
      name: 'check-sender',
      run: (s) => {
        if (s.status!.agent !== s.agent) throw new FedlineError(ErrorCodes.MSG_TOPIC, `status on ${s.m.topic} names agent "${s.status!.agent}"`);
      },
    },
    { name: 'track-presence', run: (s) => this.track(s.status!) },
  ];

  constructor(ctx: AggregatorContext) {
    this.ctx = ctx;
  }

  readonly onStatus = (m: InboundMessage): void => runSteps(this.steps, { m }, (s, err) => this.ctx.reject(err, m.topic, s.agent ?? null));

  isOnline(agent: string): boolean {
    return this.online.has(agent);
  }

  /**
   * Settles when an agent comes or goes, after `ms`, or when `stop` settles, whichever is first.
   * Called every second while an agent is offline: each call removes what it added (its listeners
   * and timer), and `stop` gets one reaction however often it is waited on.
   */
  waitForChange(ms: number, stop: Promise<void>): Promise<void> {
    const { clock } = this.ctx;
    this.watchStop(stop);
    return new Promise<void>((resolve) => {
      const finish = () => {
        clock.clearTimeout(timer);
        this.changed.off('change', finish);
        this.changed.off('stop', finish);
        resolve();
      };
      const timer = clock.setTimeout(finish, ms);
      this.changed.on('change', finish);
      this.changed.on('stop', finish);
    });
  }

  private watchStop(stop: Promise<void>): void {
    if (this.watched.has(stop)) return;
    this.watched.add(stop);
    void stop.then(() => this.changed.emit('stop'));
  }

  private track(status: AgentStatus): void {
    const was = this.online.has(status.agent);
    if (status.state === 'offline') this.online.delete(status.agent);
    else this.online.add(status.agent);
    if (was !== this.online.has(status.agent)) {
      this.ctx.log.info({ agent: status.agent, state: status.state }, status.state === 'offline' ? 'agent offline' : 'agent online');
      this.changed.emit('change');
    }
  }
}
