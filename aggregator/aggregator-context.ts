import type { EventEmitter } from 'node:events';
import type { Clock } from '../shared/util/async.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import { describeError } from '../shared/protocol/errors.js';
import { PROTOCOL_VERSION, type AckMsg } from '../shared/protocol/messages.js';
import type { Topics } from '../shared/protocol/topics.js';
import { packMsg } from '../shared/protocol/wire-codec.js';
import type { Counters } from '../shared/util/counters.js';
import type { Logger } from '../shared/util/logger.js';
import type { EventSink } from '../shared/transport/event-publisher.js';
import type { Transport } from '../shared/transport/transport.js';
import type { ModelStore } from './model-store.js';
import type { UpdateSpool } from './update-spool.js';

export type Config = Readonly<AggregatorConfig> | AggregatorConfig;

/** An ack to an agent; the fields not given take their empty values. */
export type AckFields = Partial<AckMsg> & Pick<AckMsg, 'status'>;

/** What the aggregator's units share: its config, adapters, and the ways to answer and to drop a message. */
export interface AggregatorContext {
  readonly config: Config;
  readonly transport: Transport;
  readonly topics: Topics;
  readonly store: ModelStore;
  readonly spool: UpdateSpool;
  readonly clock: Clock;
  readonly log: Logger;
  readonly counters: Counters;
  readonly emitEvent: EventSink;
  /** Log, count and drop. Never throws: a bad message must not stop the service. */
  reject(err: unknown, topic: string, agent: string | null): void;
  /** Publish an ack to an agent (QoS 1); a failed publish is logged, never thrown. */
  sendAck(round: number, agent: string, ack: AckFields): void;
}

export function createReject(counters: Counters, log: Logger, emitter: EventEmitter): AggregatorContext['reject'] {
  return (err, topic, agent) => {
    const { code, message } = describeError(err);
    counters.inc(code);
    log.warn({ topic, agent, code }, message);
    emitter.emit('rejected', { topic, agent, code, message });
  };
}

export function createAckSender(transport: Transport, topics: Topics, log: Logger): AggregatorContext['sendAck'] {
  return (round, agent, ack) => {
    const msg: AckMsg = {
      v: PROTOCOL_VERSION,
      type: 'ack',
      round,
      agent,
      upload: null,
      sha256: null,
      code: null,
      reason: null,
      missing: [],
      stored: 0,
      window: 0,
      ...ack,
    };
    transport
      .publish(topics.ack(round, agent), packMsg(msg), { qos: 1 })
      .catch((err: Error) => log.warn({ err: err.message, agent, round }, 'could not send ack'));
  };
}
