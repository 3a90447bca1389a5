import { encodeJson } from '../protocol/wire-codec.js';
import type { Logger } from '../util/logger.js';
import type { MesEventType } from '../protocol/mes.js';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import type { Topics } from '../protocol/topics.js';
import type { Transport } from './transport.js';

/** Event types and their payload schemas: shared/protocol/mes.ts; documented in docs/topics.md. */
export type EventType = MesEventType;

export type EventSink = (type: EventType, payload: Record<string, unknown>) => void;

/**
 * JSON events for MES and dashboards on `<root>/events/<type>` (QoS 1, not retained). An agent's
 * events go one level deeper, `<root>/events/<type>/<agent>` (`sourceAgent`), so that the
 * broker's ACL lets an agent publish only its own. Publishing an event never throws into the
 * caller: a broker hiccup must not stop a round.
 */
export function createEventPublisher(
  transport: Transport,
  topics: Topics,
  federation: string,
  log: Logger,
  local?: EventSink,
  sourceAgent?: string,
): EventSink {
  return (type, payload) => {
    const event = { v: PROTOCOL_VERSION, type, federation, ts: Date.now(), ...payload };
    local?.(type, event);
    transport
      .publish(topics.event(type, sourceAgent), encodeJson(event), { qos: 1 })
      .catch((err: Error) => log.warn({ err: err.message, type }, 'could not publish event'));
  };
}
