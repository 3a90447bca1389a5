import { EventEmitter } from 'node:events';
import { systemClock, type Clock } from '../../shared/util/async.js';
import { decide, openNotBefore, type GateDecision, type GateNode, type SourceState } from './combine.js';
import type { SourceProblem, TriggerSource } from './source.js';
import { planWindow, type WindowPlan } from './window-plan.js';

export interface GateSnapshot extends GateDecision {
  sources: { id: string; state: SourceState['state']; detail: string; since: number }[];
}

/**
 * The trigger gate: starts the sources, keeps their latest states and combines them (pure logic
 * in combine.ts) into one answer, "may this box train now?". Emits `change` (GateSnapshot) when
 * the answer or its reason changes and `problem` (SourceProblem) when a source reports a fault.
 */
export class TriggerGate extends EventEmitter {
  private readonly root: GateNode;
  private readonly sources: Map<string, TriggerSource>;
  private readonly clock: Clock;
  private readonly states = new Map<string, SourceState>();
  private last: GateDecision;
  private started = false;
  private starting = false;

  constructor(root: GateNode, sources: readonly TriggerSource[], clock: Clock = systemClock) {
    super();
    this.root = root;
    this.clock = clock;
    this.sources = new Map(sources.map((s) => [s.id, s]));
    this.last = decide(root, this.states);
    // A problem nobody listens to must not become an unhandled 'error'-like crash: it is data.
    this.on('problem', () => undefined);
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    // Sources report while they start; one `change` with the combined result once all have.
    this.starting = true;
    for (const source of this.sources.values()) {
      this.states.set(source.id, { state: 'unknown', detail: 'starting', since: this.clock.now() });
      await source.start({
        update: (u) => this.onUpdate(source.id, u.state, u.detail),
        problem: (p: SourceProblem) => this.emit('problem', p),
      });
    }
    this.starting = false;
    this.recompute(true);
  }

  async stop(): Promise<void> {
    this.started = false;
    await Promise.all([...this.sources.values()].map((s) => s.stop().catch(() => undefined)));
  }

  get open(): boolean {
    return this.last.open;
  }

  snapshot(): GateSnapshot {
    return {
      ...this.last,
      sources: [...this.states.entries()].map(([id, s]) => ({ id, ...s })),
    };
  }

  /** Lower bound on the next opening (see combine.ts). */
  openNotBefore(now = this.clock.now()): number | null {
    if (this.last.open) return now;
    return openNotBefore(this.root, now, (id) => {
      const s = this.states.get(id);
      if (s?.state === 'open') return now;
      return this.sources.get(id)?.openNotBefore(now) ?? null;
    });
  }

  /** What to do with a round due at `deadlineAt`: run, wait, or give up (window-plan.ts). */
  plan(deadlineAt: number): WindowPlan {
    const now = this.clock.now();
    return planWindow({ now, deadlineAt, open: this.last.open, openNotBefore: this.openNotBefore(now) });
  }

  private onUpdate(id: string, state: SourceState['state'], detail: string): void {
    const prev = this.states.get(id);
    if (prev && prev.state === state && prev.detail === detail) return;
    this.states.set(id, { state, detail, since: prev && prev.state === state ? prev.since : this.clock.now() });
    if (!this.starting) this.recompute(false);
  }

  private recompute(force: boolean): void {
    const next = decide(this.root, this.states);
    const changed = next.state !== this.last.state || next.detail !== this.last.detail;
    this.last = next;
    if (changed || force) this.emit('change', this.snapshot());
  }
}
