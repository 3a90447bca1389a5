import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { Logger } from '../util/logger.js';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import { Dispatcher, type InboundMessage, type LastWill, type MessageHandler, type PublishOptions, type Transport, type TransportEvent } from './transport.js';

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
  const protocol = u.protocol === 'mqtts:' ? 'mqtts' : 'mqtt';
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : protocol === 'mqtts' ? 8883 : 1883, protocol };
}

/** The URL of the server MQTT.js used for its latest connection (its `servers` rotation writes host, port and protocol into the options). */
function currentUrl(client: MqttClient, fallback: string): string {
  const o = client.options as { host?: string; port?: number; protocol?: string };
  if (!o.host || !o.port || !o.protocol) return fallback;
  return `${o.protocol}://${o.host.includes(':') ? `[${o.host}]` : o.host}:${o.port}`;
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

  private constructor(client: MqttClient, options: MqttTransportOptions) {
    this.client = client;
    this.clientId = options.clientId;
    this.log = options.logger;
    this.brokerUrl = options.url;
    client.on('message', (topic, payload, packet) => {
      const message: InboundMessage = { topic, payload, retain: packet.retain };
      this.dispatcher.dispatch(message, (err, m) => this.log.error({ err, topic: m.topic }, 'message handler failed'));
    });
    client.on('connect', () => {
      const now = options.urls?.length ? currentUrl(client, options.url) : options.url;
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
    const clientOptions: IClientOptions = {
      clientId: options.clientId,
      protocolVersion: 4,
      clean: true,
      keepalive: options.keepaliveSec ?? 30,
      reconnectPeriod: options.reconnectPeriodMs ?? 1000,
      connectTimeout: options.connectTimeoutMs ?? 10_000,
      resubscribe: true,
      ...(options.urls?.length ? { servers: [options.url, ...options.urls].map(serverOf) } : {}),
      ...(options.username !== undefined ? { username: options.username } : {}),
      ...(options.password !== undefined ? { password: options.password } : {}),
      ...(options.caFile ? { ca: readFileSync(options.caFile) } : {}),
      ...(options.certFile ? { cert: readFileSync(options.certFile) } : {}),
      ...(options.keyFile ? { key: readFileSync(options.keyFile) } : {}),
      ...(options.will
        ? { will: { topic: options.will.topic, payload: Buffer.from(options.will.payload), qos: options.will.qos ?? 1, retain: options.will.retain ?? false } }
        : {}),
    };
    const client = mqtt.connect(options.url, clientOptions);
    const transport = new MqttTransport(client, options);
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

  async subscribe(filter: string, handler: MessageHandler): Promise<void> {
    if (this.dispatcher.add(filter, handler)) {
      const grants = await this.client.subscribeAsync(filter, { qos: 1 });
      const refused = grants.find((g) => g.qos === 128);
      if (refused) {
        this.dispatcher.remove(filter, handler);
        throw new FedlineError(ErrorCodes.TRANSPORT, `broker refused subscription to ${filter}`);
      }
    }
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
