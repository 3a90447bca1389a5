import { EventEmitter } from 'node:events';
import type { TrainTask } from '../shared/protocol/messages.js';
import type { BatchBoundary, GlobalModel, ScaffoldControl, Trainer, TrainProgress, TrainResult } from '../training/trainer.js';

export type SessionState = 'running' | 'pausing' | 'paused' | 'done' | 'failed';

export interface TrainingSessionOptions {
  /** Ends the session for good (round closed, agent stopping, window missed): training throws at the next boundary. */
  signal: AbortSignal;
  onProgress?: (p: TrainProgress) => void;
  /** SCAFFOLD's variates for the trainer (task.scaffold). */
  control?: ScaffoldControl;
  now?: () => number;
}

/**
 * One local training run that can be paused and resumed: pause() takes effect at the next batch
 * boundary, where training holds still with everything it has (weights, optimizer state, the
 * epoch's shuffle order, its position), and resume() continues from that batch. The result is
 * the same as an uninterrupted run (test/training-session.test.ts checks it bit for bit).
 * `trainMs` of the result counts training time only, not the time spent paused.
 *
 * Events: `paused` (BatchBoundary) once training actually stands at a boundary, `resumed`
 * (BatchBoundary) when it continues.
 */
export class TrainingSession extends EventEmitter {
  private stateValue: SessionState = 'running';
  private pauseWanted = false;
  private wake: (() => void) | null = null;
  private pausedSince = 0;
  private pausedTotalMs = 0;
  private lastBoundary: BatchBoundary | null = null;
  private readonly now: () => number;
  readonly result: Promise<TrainResult>;

  constructor(trainer: Trainer, model: GlobalModel, task: TrainTask, federatedNames: readonly string[], options: TrainingSessionOptions) {
    super();
    this.now = options.now ?? Date.now;
    const { signal } = options;
    this.result = trainer
      .train(model, task, federatedNames, {
        signal,
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        ...(options.control ? { control: options.control } : {}),
        atBatchBoundary: (at) => this.boundary(at, signal),
      })
      .then(
        (r) => {
          this.stateValue = 'done';
          return { ...r, trainMs: Math.max(0, r.trainMs - this.pausedTotalMs) };
        },
        (err: unknown) => {
          this.stateValue = 'failed';
          throw err;
        },
      );
    // The owner awaits `result`; this keeps an early rejection from being reported as unhandled.
    this.result.catch(() => undefined);
  }

  get state(): SessionState {
    return this.stateValue;
  }

  /** Time spent paused so far, ms. */
  get pausedMs(): number {
    return this.pausedTotalMs + (this.stateValue === 'paused' ? this.now() - this.pausedSince : 0);
  }

  /** The last batch boundary training passed (or stands at). */
  get position(): BatchBoundary | null {
    return this.lastBoundary;
  }

  /** Stop at the next batch boundary and hold. No effect once training has finished. */
  pause(): void {
    if (this.stateValue !== 'running') return;
    this.pauseWanted = true;
    this.stateValue = 'pausing';
  }

  /** Continue (or cancel a pause that has not reached its boundary yet). */
  resume(): void {
    this.pauseWanted = false;
    if (this.stateValue === 'pausing') this.stateValue = 'running';
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  private async boundary(at: BatchBoundary, signal: AbortSignal): Promise<void> {
    this.lastBoundary = at;
    if (!this.pauseWanted || signal.aborted) return;
    this.stateValue = 'paused';
    this.pausedSince = this.now();
    this.emit('paused', at);
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(signal.reason);
        signal.addEventListener('abort', onAbort, { once: true });
        this.wake = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        // resume() may have come between the check above and here.
        if (!this.pauseWanted) this.wake();
      });
    } finally {
      this.pausedTotalMs += this.now() - this.pausedSince;
      this.wake = null;
    }
    this.stateValue = 'running';
    this.emit('resumed', at);
  }
}
