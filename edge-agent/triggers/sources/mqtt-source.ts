import { systemClock, type Clock } from '../../../shared/util/async.js';
import { ErrorCodes, FedlineError } from '../../../shared/protocol/errors.js';
import type { Logger } from '../../../shared/util/logger.js';
import type { MqttSource as MqttSpec } from '../../../shared/config/trigger-config.js';
import type { InboundMessage, Transport } from '../../../shared/transport/transport.js';
import { conditionHolds, describeCondition, extractPayloadValue, parseJsonPath } from '../condition.js';
import type { SourceCallbacks, TriggerSource } from '../source.js';

/**
 * A line state published by the MES on an MQTT topic (ideally retained, so the agent learns it at
 * once), e.g. `mes/line1/state` carrying `{"line":{"state":"Idle"}}` with path `$.line.state`.
 * Until a message arrives, after a payload that does not carry the value, or when nothing came
 * for `staleAfterMs`, the state is unknown: no training.
 */
export class MqttTriggerSource implements TriggerSource {
  readonly id: string;
  private readonly spec: MqttSpec;
  private readonly transport: Transport;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly keys: (string | number)[] | null;
  private callbacks: SourceCallbacks | null = null;
  private staleTimer: unknown = null;
  private readonly onReject: ((err: unknown, topic: string) => void) | undefined;

  /** `onReject`: a payload that does not carry the value (logged here; the caller counts it). */
  constructor(spec: MqttSpec, transport: Transport, log: Logger, clock: Clock = systemClock, id?: string, onReject?: (err: unknown, topic: string) => void) {
    this.spec = spec;
    this.onReject = onReject;
    this.transport = transport;
    this.clock = clock;
    this.log = log;
    this.keys = spec.path ? parseJsonPath(spec.path) : null;
    this.id = id ?? `mqtt ${spec.topic}${spec.path ? ` ${spec.path}` : ''}`;
  }

  async start(callbacks: SourceCallbacks): Promise<void> {
    this.callbacks = callbacks;
    callbacks.update({ state: 'unknown', detail: `no message on ${this.spec.topic} yet` });
    this.armStale();
    await this.transport.subscribe(this.spec.topic, this.onMessage);
  }

  async stop(): Promise<void> {
    this.callbacks = null;
    if (this.staleTimer !== null) this.clock.clearTimeout(this.staleTimer);
    await this.transport.unsubscribe(this.spec.topic, this.onMessage).catch(() => undefined);
  }

  openNotBefore(): null {
    return null;
  }

  private armStale(): void {
    if (this.spec.staleAfterMs === undefined) return;
    if (this.staleTimer !== null) this.clock.clearTimeout(this.staleTimer);
    this.staleTimer = this.clock.setTimeout(() => {
      this.callbacks?.update({ state: 'unknown', detail: `nothing on ${this.spec.topic} for ${this.spec.staleAfterMs} ms: line state unknown` });
    }, this.spec.staleAfterMs);
  }

  private readonly onMessage = (m: InboundMessage): void => {
    if (!this.callbacks) return;
    this.armStale();
    if (m.payload.byteLength === 0) {
      this.callbacks.update({ state: 'unknown', detail: `the retained state on ${m.topic} was cleared` });
      return;
    }
    const got = extractPayloadValue(m.payload, this.keys);
    if ('error' in got) {
      if (this.onReject)
        this.onReject(
          new FedlineError(
            ErrorCodes.MSG_SCHEMA,
            `MES line-state message on ${m.topic} not understood (path ${this.spec.path ?? '(whole payload)'}): ${got.error}`,
          ),
          m.topic,
        );
      else this.log.warn({ topic: m.topic, path: this.spec.path }, `MES line-state message not understood: ${got.error}`);
      this.callbacks.update({ state: 'unknown', detail: `${m.topic}: ${got.error}` });
      return;
    }
    const holds = conditionHolds(this.spec.when, got.value);
    this.callbacks.update({ state: holds ? 'open' : 'closed', detail: `${JSON.stringify(got.value)} (needs ${describeCondition(this.spec.when)})` });
  };
}
