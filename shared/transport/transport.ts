import { topicMatches } from '../protocol/topics.js';

/**
 * The messaging port every service talks through. The real adapter is MQTT.js
 * (shared/transport/mqtt-transport.ts); unit tests of the layers above use the in-memory hub
 * (shared/transport/memory-transport.ts). Nothing above this interface imports mqtt.
 */
export interface InboundMessage {
  topic: string;
  payload: Buffer;
  retain: boolean;
}

export type MessageHandler = (message: InboundMessage) => void;

export interface PublishOptions {
  /** 0 or 1; fedline uses 1 everywhere (at least once) unless a message is purely cosmetic. Default 1. */
  qos?: 0 | 1;
  retain?: boolean;
}

export type TransportEvent = 'connect' | 'offline' | 'error';

export interface Transport {
  readonly clientId: string;
  readonly connected: boolean;
  /** Resolves when the broker acknowledged the message (PUBACK for QoS 1). */
  publish(topic: string, payload: Buffer | string, options?: PublishOptions): Promise<void>;
  /** Deliver messages matching `filter` to `handler`; resolves once the broker granted it. */
  subscribe(filter: string, handler: MessageHandler): Promise<void>;
  unsubscribe(filter: string, handler: MessageHandler): Promise<void>;
  on(event: TransportEvent, listener: (arg?: unknown) => void): void;
  close(): Promise<void>;
}

export interface LastWill {
  topic: string;
  payload: Buffer | string;
  qos?: 0 | 1;
  retain?: boolean;
}

/** Routes incoming messages to handlers by topic filter; shared by both adapters. */
export class Dispatcher {
  private readonly routes = new Map<string, Set<MessageHandler>>();

  add(filter: string, handler: MessageHandler): boolean {
    let set = this.routes.get(filter);
    const isNew = !set;
    if (!set) this.routes.set(filter, (set = new Set()));
    set.add(handler);
    return isNew;
  }

  /** Returns true when no handler is left for the filter (the caller unsubscribes at the broker). */
  remove(filter: string, handler: MessageHandler): boolean {
    const set = this.routes.get(filter);
    if (!set) return false;
    set.delete(handler);
    if (set.size === 0) {
      this.routes.delete(filter);
      return true;
    }
    return false;
  }

  filters(): string[] {
    return [...this.routes.keys()];
  }

  dispatch(message: InboundMessage, onHandlerError: (err: unknown, message: InboundMessage) => void): void {
    for (const [filter, handlers] of this.routes) {
      if (!topicMatches(filter, message.topic)) continue;
      for (const handler of handlers) {
        try {
          handler(message);
        } catch (err) {
          // A handler bug must not take the connection (or other handlers) down with it.
          onHandlerError(err, message);
        }
      }
    }
  }
}
