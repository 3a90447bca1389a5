import { systemClock, type Clock } from '../shared/util/async.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { TrainTask } from '../shared/protocol/messages.js';
import type { GateSnapshot, TriggerGate } from './triggers/gate.js';
import type { BatchBoundary, GlobalModel, ScaffoldControl, Trainer, TrainProgress, TrainResult } from '../training/trainer.js';
import { TrainingSession } from './training-session.js';

export interface WindowedTrainingOptions {
  /** The round's end: aborts everything (round closed, newer round, agent stopping). */
  signal: AbortSignal;
  /** The round's deadline (epoch ms, as announced). */
  deadlineAt: number;
  onProgress?: (p: TrainProgress) => void;
  /** Training stands at a batch boundary because the window closed. */
  onPaused?: (at: BatchBoundary, why: string) => void;
  onResumed?: (at: BatchBoundary, why: string) => void;
  /** SCAFFOLD's variates for the trainer (task.scaffold). */
  control?: ScaffoldControl;
}

/**
 * The agent's use of its trigger gate during a round:
 *  - acquire(): before any compute work, wait for the window (or give up with FL_WINDOW_MISSED
 *    when it cannot open before the round's deadline);
 *  - train(): a TrainingSession that pauses at the next batch boundary whenever the window
 *    closes and resumes when it opens again; paused past the deadline (or with a schedule that
 *    stays shut past it), the session ends with FL_WINDOW_MISSED and its progress is dropped.
 */
export class TrainingWindow {
  private readonly gate: TriggerGate;
  private readonly clock: Clock;

  constructor(gate: TriggerGate, clock: Clock = systemClock) {
    this.gate = gate;
    this.clock = clock;
  }

  get open(): boolean {
    return this.gate.open;
  }

  snapshot(): GateSnapshot {
    return this.gate.snapshot();
  }

  /**
   * Resolves once the window is open. Calls `onWaiting` with the reason whenever it changes while
   * waiting. Rejects with FL_WINDOW_MISSED when it cannot open before `deadlineAt`, or with the
   * signal's reason.
   */
  async acquire(deadlineAt: number, signal: AbortSignal, onWaiting: (why: string) => void): Promise<void> {
    let lastWhy: string | null = null;
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const plan = this.gate.plan(deadlineAt);
      if (plan.action === 'run') return;
      if (plan.action === 'give-up') throw new FedlineError(ErrorCodes.WINDOW_MISSED, plan.reason, { deadlineAt });
      const why = this.gate.snapshot().detail;
      if (why !== lastWhy) {
        lastWhy = why;
        onWaiting(why);
      }
      await this.nextChange(plan.until, signal);
    }
  }

  /** Resolves on the next gate change, at `until`, or when `signal` aborts (the loop above then throws). */
  private nextChange(until: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        this.gate.off('change', done);
        signal.removeEventListener('abort', done);
        this.clock.clearTimeout(timer);
        resolve();
      };
      const timer = this.clock.setTimeout(done, Math.max(0, until - this.clock.now()) + 1);
      this.gate.on('change', done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Train in the window: pause at a batch boundary when it closes, resume when it opens. */
  async train(trainer: Trainer, model: GlobalModel, task: TrainTask, federatedNames: readonly string[], o: WindowedTrainingOptions): Promise<TrainResult> {
    const missed = new AbortController();
    const signal = AbortSignal.any([o.signal, missed.signal]);
    const session = new TrainingSession(trainer, model, task, federatedNames, {
      signal,
      ...(o.onProgress ? { onProgress: o.onProgress } : {}),
      ...(o.control ? { control: o.control } : {}),
      now: () => this.clock.now(),
    });
    let deadlineTimer: unknown = null;
    const giveUpIfHopeless = () => {
      if (session.state !== 'paused' && session.state !== 'pausing') return;
      const plan = this.gate.plan(o.deadlineAt);
      if (plan.action === 'give-up')
        missed.abort(new FedlineError(ErrorCodes.WINDOW_MISSED, `${plan.reason}; the paused training is dropped`, { deadlineAt: o.deadlineAt }));
    };
    const onChange = (snap: GateSnapshot) => {
      if (snap.open) session.resume();
      else {
        session.pause();
        giveUpIfHopeless();
      }
    };
    session.on('paused', (at: BatchBoundary) => {
      o.onPaused?.(at, this.gate.snapshot().detail);
      giveUpIfHopeless();
      if (deadlineTimer === null) deadlineTimer = this.clock.setTimeout(giveUpIfHopeless, Math.max(0, o.deadlineAt - this.clock.now()) + 1);
    });
    session.on('resumed', (at: BatchBoundary) => {
      if (deadlineTimer !== null) this.clock.clearTimeout(deadlineTimer);
      deadlineTimer = null;
      o.onResumed?.(at, this.gate.snapshot().detail);
    });
    this.gate.on('change', onChange);
    if (!this.gate.open) session.pause();
    try {
      return await session.result;
    } finally {
      this.gate.off('change', onChange);
      if (deadlineTimer !== null) this.clock.clearTimeout(deadlineTimer);
    }
  }
}
