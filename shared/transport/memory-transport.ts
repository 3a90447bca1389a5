import { EventEmitter } from 'node:events';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import { topicMatches } from '../protocol/topics.js';
import {
  Dispatcher,
  type InboundMessage,
  type LastWill,
  type MessageHandler,
  type PublishOptions,
  type SubscribeOptions,
  type Transport,
  type TransportEvent,
} from './transport.js';

/**
 * An in-memory stand-in for a broker, for unit tests of the layers above the transport (round
 * logic, agents' state handling). It keeps retained messages, matches wildcards and delivers
 * asynchronously (as a real broker does). Integration tests use real brokers instead.
 */
export class MemoryHub {
  private readonly clients = new Set<MemoryTransport>();
  private readonly retained = new Map<string, Buffer>();
  /** Every message published, in order, for assertions. */
  readonly log: { from: string; topic: string; payload: Buffer; retain: boolean }[] = [];

  connect(clientId: string, will?: LastWill): MemoryTransport {
    const client = new MemoryTransport(this, clientId, will);
    this.clients.add(client);
    return client;
  }

  /** @internal */
  route(from: string, topic: string, payload: Buffer, retain: boolean): void {
    this.log.push({ from, topic, payload, retain });
    if (retain) {
      // MQTT 3.1.1 §3.3.1.3: a retained message with an empty payload clears the retained one.
      if (payload.byteLength === 0) this.retained.delete(topic);
      else this.retained.set(topic, payload);
    }
    for (const client of this.clients) client.deliver({ topic, payload, retain: false });
  }

  /** @internal */
  retainedFor(filter: string): InboundMessage[] {
    return [...this.retained.entries()].filter(([topic]) => topicMatches(filter, topic)).map(([topic, payload]) => ({ topic, payload, retain: true }));
  }

  /** @internal */
  disconnect(client: MemoryTransport, sendWill: boolean): void {
    this.clients.delete(client);
    if (sendWill && client.will) this.route(client.clientId, client.will.topic, Buffer.from(client.will.payload), client.will.retain ?? false);
  }

  retainedPayload(topic: string): Buffer | undefined {
    return this.retained.get(topic);
  }
}

/**
 * Hand `use` a borrowed payload as the MQTT adapter does (reused once the handlers returned): here a
 * private copy, overwritten afterwards, so that a handler that kept it fails its test.
 */
function lend(message: InboundMessage, use: (lent: InboundMessage) => void): void {
  const lent = { ...message, payload: Buffer.from(message.payload) };
  use(lent);
  lent.payload.fill(0xa5);
}

export class MemoryTransport implements Transport {
  readonly clientId: string;
  readonly will: LastWill | undefined;
  private readonly hub: MemoryHub;
  private readonly dispatcher = new Dispatcher();
  private readonly events = new EventEmitter();
  private open = true;

  constructor(hub: MemoryHub, clientId: string, will?: LastWill) {
    this.hub = hub;
    this.clientId = clientId;
    this.will = will;
  }

  get connected(): boolean {
    return this.open;
  }

  async publish(topic: string, payload: Buffer | string, options: PublishOptions = {}): Promise<void> {
    if (!this.open) throw new FedlineError(ErrorCodes.TRANSPORT, `client ${this.clientId} is closed`);
    const bytes = Buffer.from(payload);
    await Promise.resolve();
    this.hub.route(this.clientId, topic, bytes, options.retain ?? false);
  }

  async subscribe(filter: string, handler: MessageHandler, options: SubscribeOptions = {}): Promise<void> {
    this.dispatcher.add(filter, handler, options.borrowed ?? false);
    const retained = this.hub.retainedFor(filter);
    setImmediate(() => {
      for (const m of retained) {
        if (!this.open) return;
        if (options.borrowed) lend(m, handler);
        else handler(m);
      }
    });
  }

  async unsubscribe(filter: string, handler: MessageHandler): Promise<void> {
    this.dispatcher.remove(filter, handler);
  }

  /** @internal */
  deliver(message: InboundMessage): void {
    setImmediate(() => {
      if (!this.open) return;
      const onError = (err: unknown) => this.events.emit('error', err);
      if (!this.dispatcher.borrows(message.topic)) {
        this.dispatcher.dispatch(message, onError);
        return;
      }
      lend(message, (lent) => this.dispatcher.dispatch(lent, onError, true));
    });
  }

  on(event: TransportEvent, listener: (arg?: unknown) => void): void {
    this.events.on(event, listener);
  }

  async close(): Promise<void> {
    this.open = false;
    this.hub.disconnect(this, false);
  }

  /** Disconnect as if the power failed: the hub publishes the last will. */
  async crash(): Promise<void> {
    this.open = false;
    this.hub.disconnect(this, true);
  }
}
