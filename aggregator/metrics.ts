import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { totalCounter } from '../shared/observability/metrics-server.js';
import type { Counters } from '../shared/util/counters.js';

/** The aggregator's Prometheus metrics (docs/metrics.md), fed by its MES events and counters. */
export function registerAggregatorMetrics(
  registry: Registry,
  source: { counters: Counters; on(event: 'event', f: (e: Record<string, unknown>) => void): unknown },
): void {
  const rounds = new Counter({
    name: 'fedline_aggregator_rounds_total',
    help: 'Rounds closed, by kind (train, evaluate) and outcome',
    labelNames: ['kind', 'outcome'],
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'fedline_aggregator_round_duration_seconds',
    help: 'Duration of each closed round, from its start to the new model published',
    labelNames: ['kind'],
    buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200],
    registers: [registry],
  });
  const bytesUp = new Counter({
    name: 'fedline_aggregator_update_bytes_total',
    help: 'Update bytes received from agents in closed rounds',
    registers: [registry],
  });
  const bytesDown = new Counter({
    name: 'fedline_aggregator_model_bytes_total',
    help: 'Global model bytes the agents downloaded in closed rounds',
    registers: [registry],
  });
  const round = new Gauge({ name: 'fedline_aggregator_round', help: 'Number of the round started last', registers: [registry] });
  const selected = new Gauge({ name: 'fedline_aggregator_round_selected_agents', help: 'Agents selected for the round started last', registers: [registry] });
  const participants = new Gauge({
    name: 'fedline_aggregator_round_participants',
    help: 'Agents whose update counted in the round closed last',
    registers: [registry],
  });
  const version = new Gauge({ name: 'fedline_aggregator_model_version', help: 'Version of the global model published last', registers: [registry] });
  const counters = source.counters;
  const accepted = totalCounter({ name: 'fedline_aggregator_updates_accepted_total', help: 'Updates verified and spooled', registers: [registry] }, () => [
    [{}, counters.get('accepted-update')],
  ]);
  const refused = totalCounter(
    {
      name: 'fedline_aggregator_refused_total',
      help: 'Messages, chunks and updates refused, by error code (docs/protocol.md)',
      labelNames: ['code'],
      registers: [registry],
    },
    () =>
      Object.entries(counters.toJSON())
        .filter(([k]) => k.startsWith('FL_'))
        .map(([code, n]) => [{ code }, n] as [{ code: string }, number]),
  );
  const chunks = totalCounter(
    {
      name: 'fedline_aggregator_update_chunks_total',
      help: 'Update chunks received, by kind (new, duplicate, of a refused update)',
      labelNames: ['kind'],
      registers: [registry],
    },
    () => [
      [{ kind: 'new' }, counters.get('update-chunk')],
      [{ kind: 'duplicate' }, counters.get('duplicate-chunk')],
      [{ kind: 'refused-update' }, counters.get('chunk-of-refused-update')],
    ],
  );
  void accepted;
  void refused;
  void chunks;
  source.on('event', (e) => {
    if (e.type === 'round-started') {
      round.set(Number(e.round));
      selected.set(Array.isArray(e.selected) ? e.selected.length : 0);
    } else if (e.type === 'round-completed') {
      const kind = String(e.kind);
      rounds.inc({ kind, outcome: String(e.outcome ?? 'none') });
      if (typeof e.durationMs === 'number') duration.observe({ kind }, e.durationMs / 1000);
      if (typeof e.bytesUp === 'number') bytesUp.inc(e.bytesUp);
      if (typeof e.bytesDown === 'number') bytesDown.inc(e.bytesDown);
      participants.set(Array.isArray(e.participants) ? e.participants.length : 0);
    } else if (e.type === 'model-published') {
      version.set(Number(e.version));
    }
  });
}
