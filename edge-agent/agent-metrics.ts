import { Counter, Gauge, type Registry } from 'prom-client';
import { agentStates, type AgentStatus } from '../shared/protocol/messages.js';
import { totalCounter } from '../shared/observability/metrics-server.js';
import type { Counters } from '../shared/util/counters.js';
import type { RoundWorkResult } from './agent.js';

interface AgentSource {
  counters: Counters;
  readonly state: string;
  readonly transferred: { up: number; down: number };
  on(event: 'state', f: (s: AgentStatus) => void): unknown;
  on(event: 'round-done', f: (r: RoundWorkResult) => void): unknown;
}

/** The edge agent's Prometheus metrics (docs/metrics.md), fed by its state, status and counters. */
export function registerAgentMetrics(registry: Registry, agent: AgentSource, status: () => AgentStatus | null): void {
  new Gauge({
    name: 'fedline_agent_state',
    help: 'The agent state now: 1 for the current state, 0 for the others',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      for (const s of agentStates) this.set({ state: s }, agent.state === s ? 1 : 0);
    },
  });
  new Gauge({
    name: 'fedline_agent_progress_ratio',
    help: 'Progress within the current state, 0..1 (training: batches done / planned); -1 when none',
    registers: [registry],
    collect() {
      this.set(status()?.progress ?? -1);
    },
  });
  new Gauge({
    name: 'fedline_agent_round',
    help: 'The round the agent works on or worked on last; -1 before the first',
    registers: [registry],
    collect() {
      this.set(status()?.round ?? -1);
    },
  });
  const rounds = new Counter({
    name: 'fedline_agent_rounds_total',
    help: "Rounds the agent's work ended, by outcome",
    labelNames: ['outcome'],
    registers: [registry],
  });
  const changes = new Counter({
    name: 'fedline_agent_state_changes_total',
    help: 'State changes, by the state entered',
    labelNames: ['state'],
    registers: [registry],
  });
  totalCounter({ name: 'fedline_agent_update_bytes_total', help: 'Update chunk bytes sent to the aggregator', registers: [registry] }, () => [
    [{}, agent.transferred.up],
  ]);
  totalCounter({ name: 'fedline_agent_model_bytes_total', help: 'Global model bytes downloaded', registers: [registry] }, () => [[{}, agent.transferred.down]]);
  totalCounter(
    { name: 'fedline_agent_errors_total', help: 'Problems counted, by error code (docs/protocol.md)', labelNames: ['code'], registers: [registry] },
    () => Object.entries(agent.counters.toJSON()).map(([code, n]) => [{ code }, n] as [{ code: string }, number]),
  );
  agent.on('state', (s) => changes.inc({ state: s.state }));
  agent.on('round-done', (r) => rounds.inc({ outcome: r.outcome }));
}
