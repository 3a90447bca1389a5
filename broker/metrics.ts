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
