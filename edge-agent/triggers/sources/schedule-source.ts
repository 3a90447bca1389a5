import { systemClock, type Clock } from '../../../shared/util/async.js';
import type { ScheduleSource as ScheduleSpec } from '../../../shared/config/trigger-config.js';
import { Schedule } from '../schedule.js';
import type { SourceCallbacks, TriggerSource } from '../source.js';

/** Longest single timer: re-evaluating at least hourly bounds the effect of a changed system clock. */
const MAX_TIMER_MS = 3_600_000;

/** Schedule windows such as "22:00-06:00" in a time zone (pure logic in schedule.ts; timers here). */
export class ScheduleTriggerSource implements TriggerSource {
  readonly id: string;
  private readonly schedule: Schedule;
  private readonly clock: Clock;
  private timer: unknown = null;
  private callbacks: SourceCallbacks | null = null;

  constructor(spec: ScheduleSpec, clock: Clock = systemClock, id?: string) {
    this.schedule = new Schedule(spec);
    this.clock = clock;
    this.id = id ?? `schedule ${this.schedule.description}`;
  }

  async start(callbacks: SourceCallbacks): Promise<void> {
    this.callbacks = callbacks;
    this.tick();
  }

  private tick(): void {
    if (!this.callbacks) return;
    const now = this.clock.now();
    const s = this.schedule.state(now);
    this.callbacks.update({ state: s.open ? 'open' : 'closed', detail: s.detail });
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, s.nextChangeAt - now) + 5);
    this.timer = this.clock.setTimeout(() => this.tick(), delay);
  }

  async stop(): Promise<void> {
    this.callbacks = null;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
  }

  openNotBefore(now: number): number {
    return this.schedule.nextOpenAt(now);
  }
}
