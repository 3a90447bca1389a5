import { Counter, Gauge, type Registry } from 'prom-client';
import type { RunningBroker } from './broker.js';

/** The embedded broker's Prometheus metrics (docs/metrics.md). */
export function registerBrokerMetrics(registry: Registry, broker: RunningBroker): void {
  new Gauge({
    name: 'fedline_broker_clients',
    help: 'MQTT clients connected now',
    registers: [registry],
    collect() {
      this.set(broker.connectedClients());
    },
  });
  new Counter({
    name: 'fedline_broker_stalled_closed_total',
    help: 'Connections closed because they read nothing for stallTimeoutMs while bytes waited for them',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(broker.stalledClosed());
    },
  });
  // The message emitter's deliveries: a count that stays at its bound (100) or a queue that grows
  // says a subscriber reads slower than it is fed (docs/scaling.md, flow control under load).
  const emitter = (broker.aedes as unknown as { mq: { current?: number; _messageQueue?: unknown[] } }).mq;
  new Gauge({
    name: 'fedline_broker_deliveries_in_progress',
    help: 'Messages being delivered to subscribers now (at most 100: the rest wait in the queue)',
    registers: [registry],
    collect() {
      this.set(emitter.current ?? 0);
    },
  });
  new Gauge({
    name: 'fedline_broker_deliveries_queued',
    help: 'Messages waiting for a delivery slot',
    registers: [registry],
    collect() {
      this.set(emitter._messageQueue?.length ?? 0);
    },
  });
  const messages = new Counter({ name: 'fedline_broker_messages_total', help: 'Messages published by clients (not $SYS)', registers: [registry] });
  const bytes = new Counter({ name: 'fedline_broker_message_bytes_total', help: 'Payload bytes of the messages published by clients', registers: [registry] });
  const connects = new Counter({ name: 'fedline_broker_connections_total', help: 'Client connections accepted', registers: [registry] });
  const refused = new Counter({
    name: 'fedline_broker_client_errors_total',
    help: 'Client and connection errors (refused logins included)',
    registers: [registry],
  });
  broker.aedes.on('publish', (packet, client) => {
    if (!client) return; // the broker's own $SYS messages
    messages.inc();
    bytes.inc(packet.payload.length);
  });
  broker.aedes.on('client', () => connects.inc());
  broker.aedes.on('clientError', () => refused.inc());
  broker.aedes.on('connectionError', () => refused.inc());
}
