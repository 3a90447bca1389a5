import type { ErrorCode } from '../../shared/protocol/errors.js';
import type { WindowState } from './combine.js';

/**
 * One input of the trigger gate (an OPC UA variable, an MES topic, a schedule, operator
 * commands). Adapters implement it; the gate combines their states with pure logic.
 */
export interface SourceUpdate {
  state: WindowState;
  detail: string;
}

/** A fault of a source's connection (OPC UA server unreachable, node id missing, session lost), or its recovery. */
export interface SourceProblem {
  source: string;
  code: ErrorCode;
  message: string;
  /** True when the source works again after a reported problem. */
  recovered: boolean;
}

export interface SourceCallbacks {
  update(u: SourceUpdate): void;
  problem(p: SourceProblem): void;
}

export interface TriggerSource {
  /** Names the source in status lines and events, e.g. `opcua ns=1;s=Line1.State`. Unique within a gate. */
  readonly id: string;
  /** Begin observing; report through `callbacks`. Must not throw for a fault of the observed system (report it instead). */
  start(callbacks: SourceCallbacks): Promise<void>;
  stop(): Promise<void>;
  /** Lower bound on when this source can be open next (epoch ms), or null when it cannot be predicted. */
  openNotBefore(now: number): number | null;
}
