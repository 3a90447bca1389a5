import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { MqttClient, type IClientOptions } from 'mqtt';
import { BorrowingStream } from './borrowing-stream.js';
import type { Logger } from '../util/logger.js';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
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

export interface MqttTransportOptions {
  /** Broker URL: mqtt://host:port or mqtts://host:port. */
  url: string;
  /** Further nodes of a broker cluster: after a lost or failed connection, the next URL in [url, ...urls] is tried (MQTT.js `servers`, round robin). */
  urls?: readonly string[];
  clientId: string;
  username?: string;
  password?: string;
  /** TLS: CA bundle, client certificate and key (PEM file paths). */
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  will?: LastWill;
  /** Delay between reconnect attempts, ms. Default 1000. */
  reconnectPeriodMs?: number;
  /** Give up a connection attempt after this many ms. Default 10000. */
  connectTimeoutMs?: number;
  /** MQTT keepalive, seconds. Default 30. */
  keepaliveSec?: number;
  logger: Logger;
}

type Server = { host: string; port: number; protocol: 'mqtt' | 'mqtts' };

function serverOf(url: string): Server {
  const u = new URL(url);
  if (u.protocol !== 'mqtt:' && u.protocol !== 'mqtts:')
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `broker URL ${url}: only mqtt:// and mqtts:// are supported`);
  const protocol = u.protocol === 'mqtts:' ? 'mqtts' : 'mqtt';
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : protocol === 'mqtts' ? 8883 : 1883, protocol };
}

function urlOf(s: Server): string {
  return `${s.protocol}://${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}`;
}

/**
 * The MQTT.js adapter. MQTT 3.1.1 (protocol level 4) because Aedes 1.x speaks only that; clean
 * sessions, with fedline's own acks and resend lists making transfers whole after a reconnect.
 */
export class MqttTransport implements Transport {
  readonly clientId: string;
  private readonly client: MqttClient;
  private readonly dispatcher = new Dispatcher();
  private readonly events = new EventEmitter();
  private readonly log: Logger;
  private closed = false;
  private brokerUrl: string;
  /** The server of the latest connection attempt. */
  private streamUrl: string;

  private constructor(client: MqttClient, options: MqttTransportOptions) {
    this.client = client;
    this.clientId = options.clientId;
    this.log = options.logger;
    this.brokerUrl = options.url;
    this.streamUrl = options.url;
    // Messages on topics with a borrowing handler never get here: BorrowingStream delivers them (below).
    client.on('message', (topic, payload, packet) => {
      const message: InboundMessage = { topic, payload, retain: packet.retain };
      this.dispatcher.dispatch(message, (err, m) => this.log.error({ err, topic: m.topic }, 'message handler failed'));
    });
    client.on('connect', () => {
      const now = this.streamUrl;
      if (now !== this.brokerUrl) this.log.warn({ from: this.brokerUrl, to: now }, `MQTT: switched to broker ${now} (was ${this.brokerUrl})`);
      this.brokerUrl = now;
      this.events.emit('connect');
    });
    client.on('offline', () => {
      if (!this.closed) this.log.warn({ url: this.brokerUrl }, 'MQTT connection lost; reconnecting');
      this.events.emit('offline');
    });
    client.on('error', (err) => {
      this.log.warn({ err: err.message }, 'MQTT client error');
      this.events.emit('error', err);
    });
    // Errors are also emitted as events: the process must not die on an unhandled 'error'.
    this.events.on('error', () => undefined);
  }

  static async connect(options: MqttTransportOptions): Promise<MqttTransport> {
    const servers = [options.url, ...(options.urls ?? [])].map(serverOf);
    const tlsOptions = {
      rejectUnauthorized: true,
      ...(options.caFile ? { ca: readFileSync(options.caFile) } : {}),
      ...(options.certFile ? { cert: readFileSync(options.certFile) } : {}),
      ...(options.keyFile ? { key: readFileSync(options.keyFile) } : {}),
    };
    const clientOptions: IClientOptions = {
      clientId: options.clientId,
      protocolVersion: 4,
      clean: true,
      keepalive: options.keepaliveSec ?? 30,
      reconnectPeriod: options.reconnectPeriodMs ?? 1000,
      connectTimeout: options.connectTimeoutMs ?? 10_000,
      resubscribe: true,
      manualConnect: true,
      ...(options.username !== undefined ? { username: options.username } : {}),
      ...(options.password !== undefined ? { password: options.password } : {}),
      ...(options.will
        ? { will: { topic: options.will.topic, payload: Buffer.from(options.will.payload), qos: options.will.qos ?? 1, retain: options.will.retain ?? false } }
        : {}),
    };
    // MQTT.js is given its byte stream by this builder (instead of its own TCP/TLS one): each
    // connection attempt takes the next server of the cluster, round robin, as MQTT.js's `servers`
    // option would, and reads through BorrowingStream.
    let attempt = 0;
    let transport: MqttTransport | null = null;
    const client = new MqttClient(() => {
      const server = servers[attempt++ % servers.length]!;
      transport!.streamUrl = urlOf(server);
      return new BorrowingStream({
        host: server.host,
        port: server.port,
        ...(server.protocol === 'mqtts' ? { tls: tlsOptions } : {}),
        borrows: (topic) => transport!.dispatcher.borrows(topic),
        deliver: (p) => transport!.deliverBorrowed({ topic: p.topic, payload: p.payload, retain: p.retain }),
      });
    }, clientOptions);
    transport = new MqttTransport(client, options);
    client.connect();
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          cleanup();
          client.end(true);
          reject(new FedlineError(ErrorCodes.TRANSPORT, `could not connect to MQTT broker ${options.url} within ${options.connectTimeoutMs ?? 10_000} ms`));
        },
        (options.connectTimeoutMs ?? 10_000) + 500,
      );
      const onConnect = () => {
        cleanup();
        resolve();
      };
      const onError = (err: Error & { code?: number }) => {
        // Refused credentials (CONNACK 4/5) will not fix themselves by retrying.
        if (err.code === 4 || err.code === 5 || err.code === 135) {
          cleanup();
          client.end(true);
          reject(new FedlineError(ErrorCodes.TRANSPORT, `MQTT broker ${options.url} refused client "${options.clientId}": ${err.message}`));
        }
      };
      const cleanup = () => {
        clearTimeout(timer);
        client.off('connect', onConnect);
        client.off('error', onError);
      };
      client.on('connect', onConnect);
      client.on('error', onError);
    });
    return transport;
  }

  /** The broker node this client is (or was last) connected to. */
  get url(): string {
    return this.brokerUrl;
  }

  get connected(): boolean {
    return this.client.connected;
  }

  async publish(topic: string, payload: Buffer | string, options: PublishOptions = {}): Promise<void> {
    await this.client.publishAsync(topic, payload, { qos: options.qos ?? 1, retain: options.retain ?? false });
  }

  async subscribe(filter: string, handler: MessageHandler, options: SubscribeOptions = {}): Promise<void> {
    if (this.dispatcher.add(filter, handler, options.borrowed ?? false)) {
      const grants = await this.client.subscribeAsync(filter, { qos: 1 });
      const refused = grants.find((g) => g.qos === 128);
      if (refused) {
        this.dispatcher.remove(filter, handler);
        throw new FedlineError(ErrorCodes.TRANSPORT, `broker refused subscription to ${filter}`);
      }
    }
  }

  /** A PUBLISH from BorrowingStream's fast lane: its payload is a view of the receive buffer. */
  private deliverBorrowed(message: InboundMessage): void {
    this.dispatcher.dispatch(message, (err, m) => this.log.error({ err, topic: m.topic }, 'message handler failed'), true);
  }

  async unsubscribe(filter: string, handler: MessageHandler): Promise<void> {
    if (this.dispatcher.remove(filter, handler) && this.client.connected) await this.client.unsubscribeAsync(filter);
  }

  on(event: TransportEvent, listener: (arg?: unknown) => void): void {
    this.events.on(event, listener);
  }

  /**
   * Disconnect cleanly: in-flight publishes get `timeoutMs` to complete, then the connection is
   * dropped anyway (a service must be able to stop when the broker is already gone).
   */
  async close(timeoutMs = 3000): Promise<void> {
    this.closed = true;
    let timer: NodeJS.Timeout | undefined;
    const forced = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.client.end(true, {}, () => resolve());
      }, timeoutMs);
    });
    await Promise.race([this.client.endAsync(), forced]);
    clearTimeout(timer);
  }

  /** Drop the connection without DISCONNECT, so the broker sends the last will (tests, shutdown on fatal). */
  async closeAbruptly(): Promise<void> {
    this.closed = true;
    (this.client as unknown as { stream?: { destroy(): void } }).stream?.destroy();
    await this.client.endAsync(true);
  }
}
