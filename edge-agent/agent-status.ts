import { encodeJson } from '../shared/protocol/wire-codec.js';
import { PROTOCOL_VERSION, type AgentStatus } from '../shared/protocol/messages.js';
import type { Transport } from '../shared/transport/transport.js';

export type StatusPatch = Partial<Omit<AgentStatus, 'v' | 'agent' | 'ts'>>;

/** The last-will / offline status, published by the broker when the agent vanishes. */
export function offlineStatus(agent: string): AgentStatus {
  return { v: PROTOCOL_VERSION, agent, state: 'offline', round: null, progress: null, detail: null, backend: null, samples: null, ts: 0 };
}

/** Progress-only updates closer together than this are not published (state changes always are). */
const PROGRESS_THROTTLE_MS = 500;

/**
 * The agent's retained status on its status topic: every patch updates it; progress updates are
 * throttled, state changes always go out and are reported to `onStateChange`.
 */
export class AgentStatusPublisher {
  private status: AgentStatus;
  private lastStatusAt = 0;

  constructor(
    private readonly transport: Transport,
    private readonly topic: string,
    agent: string,
    private readonly onStateChange: (status: AgentStatus) => void,
  ) {
    this.status = { v: PROTOCOL_VERSION, agent, state: 'starting', round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() };
  }

  get current(): AgentStatus {
    return this.status;
  }

  async set(patch: StatusPatch, force = false): Promise<void> {
    const prevState = this.status.state;
    const status: AgentStatus = { ...this.status, ...patch, ts: Date.now() };
    this.status = status;
    // Decided now, on this patch's own before and after: another set() may change the status while
    // this one is being published, and each state change must be reported once, with its own status.
    const changed = status.state !== prevState;
    // Progress updates are throttled; state changes always go out.
    const now = Date.now();
    if (!force && patch.state === undefined && now - this.lastStatusAt < PROGRESS_THROTTLE_MS) return;
    this.lastStatusAt = now;
    await this.transport.publish(this.topic, encodeJson(status), { qos: 1, retain: true });
    if (changed) this.onStateChange(status);
  }
}
