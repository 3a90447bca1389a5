import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { totalCounter } from '../shared/observability/metrics-server.js';
import type { Counters } from '../shared/util/counters.js';
import type { Verdict } from './inspect.js';

interface InspectSource {
  counters: Counters;
  readonly modelVersion: number | null;
  readonly queued: number;
  on(event: 'verdict', f: (v: Verdict) => void): unknown;
}

/** The inspection service's Prometheus metrics (docs/metrics.md). */
export function registerInspectMetrics(registry: Registry, service: InspectSource): void {
  const verdicts = new Counter({
    name: 'fedline_inspect_verdicts_total',
    help: 'Verdicts published, by predicted class ("error": not classified)',
    labelNames: ['class'],
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'fedline_inspect_verdict_latency_seconds',
    help: 'From an image received to its verdict published',
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  new Gauge({
    name: 'fedline_inspect_model_version',
    help: 'Version of the global model classifying now; -1 before the first',
    registers: [registry],
    collect() {
      this.set(service.modelVersion ?? -1);
    },
  });
  new Gauge({
    name: 'fedline_inspect_queued_images',
    help: 'Images waiting for a verdict',
    registers: [registry],
    collect() {
      this.set(service.queued);
    },
  });
  totalCounter(
    { name: 'fedline_inspect_errors_total', help: 'Problems counted, by error code (docs/protocol.md)', labelNames: ['code'], registers: [registry] },
    () => Object.entries(service.counters.toJSON()).map(([code, n]) => [{ code }, n] as [{ code: string }, number]),
  );
  service.on('verdict', (v) => {
    verdicts.inc({ class: v.class ?? 'error' });
    latency.observe(Math.max(0, v.ts - v.receivedAt) / 1000);
  });
}
