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

export interface SubscribeOptions {
  /**
   * The handler takes the payload as a borrowed view: valid only until it returns, so it copies
   * whatever it keeps. The MQTT adapter then delivers the message straight from its receive buffer,
   * with no allocation per message (shared/transport/borrowing-stream.ts); for the aggregator's
   * update chunks. The in-memory adapter overwrites the payload after the handler returned, so that
   * unit tests catch a handler that keeps it. Default false.
   */
  borrowed?: boolean;
}

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
  subscribe(filter: string, handler: MessageHandler, options?: SubscribeOptions): Promise<void>;
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
  /** filter -> handler -> whether it takes borrowed payloads. */
  private readonly routes = new Map<string, Map<MessageHandler, boolean>>();

  add(filter: string, handler: MessageHandler, borrowed = false): boolean {
    let handlers = this.routes.get(filter);
    const isNew = !handlers;
    if (!handlers) this.routes.set(filter, (handlers = new Map()));
    handlers.set(handler, borrowed);
    return isNew;
  }

  /** Returns true when no handler is left for the filter (the caller unsubscribes at the broker). */
  remove(filter: string, handler: MessageHandler): boolean {
    const handlers = this.routes.get(filter);
    if (!handlers) return false;
    handlers.delete(handler);
    if (handlers.size === 0) {
      this.routes.delete(filter);
      return true;
    }
    return false;
  }

  filters(): string[] {
    return [...this.routes.keys()];
  }

  /** Whether a handler that takes borrowed payloads listens on `topic`. */
  borrows(topic: string): boolean {
    for (const [filter, handlers] of this.routes) {
      if (!topicMatches(filter, topic)) continue;
      for (const borrowed of handlers.values()) if (borrowed) return true;
    }
    return false;
  }

  /**
   * Hand `message` to every handler whose filter matches. When its payload is `borrowed` (valid
   * only during this call), handlers that did not ask for borrowed payloads get a copy.
   */
  dispatch(message: InboundMessage, onHandlerError: (err: unknown, message: InboundMessage) => void, borrowed = false): void {
    let owned: InboundMessage | null = borrowed ? null : message;
    for (const [filter, handlers] of this.routes) {
      if (!topicMatches(filter, message.topic)) continue;
      for (const [handler, takesBorrowed] of handlers) {
        const m = borrowed && takesBorrowed ? message : (owned ??= { ...message, payload: Buffer.from(message.payload) });
        try {
          handler(m);
        } catch (err) {
          // A handler bug must not take the connection (or other handlers) down with it.
          onHandlerError(err, m);
        }
      }
    }
  }
}
