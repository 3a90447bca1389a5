import { weekdays, type ScheduleSource, type Weekday } from '../../shared/config/trigger-config.js';

/**
 * Schedule windows ("22:00-06:00" in a time zone, on some weekdays), pure: every answer is a
 * function of the time given, so tests run on any clock. Times are computed in the schedule's
 * time zone with Intl (the IANA database Node ships), so daylight-saving changes are handled.
 */

const WEEK_MIN = 7 * 1440;
const MINUTE_MS = 60_000;

interface Interval {
  /** Minute of the week (Monday 00:00 = 0), may run past the week's end. */
  start: number;
  end: number;
}

export interface ScheduleState {
  open: boolean;
  /** When the answer may change next (epoch ms): re-evaluate then. */
  nextChangeAt: number;
  detail: string;
}

function parseHm(text: string): number {
  const [h, m] = text.split(':').map(Number);
  return h! * 60 + m!;
}

export class Schedule {
  private readonly intervals: Interval[] = [];
  private readonly format: Intl.DateTimeFormat;
  readonly timeZone: string;
  readonly description: string;

  constructor(spec: Pick<ScheduleSource, 'windows' | 'timeZone' | 'days'>) {
    this.timeZone = spec.timeZone ?? Intl.DateTimeFormat().resolvedOptions().timeZone;
    this.format = new Intl.DateTimeFormat('en-US', {
      timeZone: this.timeZone,
      hourCycle: 'h23',
      weekday: 'short',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    });
    const days: readonly Weekday[] = spec.days ?? weekdays;
    for (const w of spec.windows) {
      const start = parseHm(w.slice(0, 5));
      const end = w.slice(6) === '24:00' ? 1440 : parseHm(w.slice(6));
      for (const d of days) {
        const base = weekdays.indexOf(d) * 1440;
        this.intervals.push({ start: base + start, end: base + (end > start ? end : end + 1440) });
      }
    }
    this.description = `${spec.windows.join(', ')} ${this.timeZone}${spec.days ? ` on ${spec.days.join(', ')}` : ''}`;
  }

  /** Minute of the week (fractional) of an instant, in the schedule's time zone. */
  minuteOfWeek(ms: number): number {
    const parts = this.format.formatToParts(new Date(ms));
    const get = (type: string) => parts.find((p) => p.type === type)?.value ?? '';
    const day = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'].indexOf(get('weekday'));
    const seconds = Number(get('hour')) * 3600 + Number(get('minute')) * 60 + Number(get('second')) + (((ms % 1000) + 1000) % 1000) / 1000;
    return day * 1440 + seconds / 60;
  }

  private openAtMinute(mow: number): boolean {
    return this.intervals.some((i) => (mow >= i.start && mow < i.end) || (mow + WEEK_MIN >= i.start && mow + WEEK_MIN < i.end));
  }

  isOpen(ms: number): boolean {
    return this.openAtMinute(this.minuteOfWeek(ms));
  }

  /**
   * The instant at which local wall time first reaches minute-of-week `target` after `ms`.
   * Guess by plain arithmetic, then correct by the difference between the wall time found there
   * and the target (a daylight-saving change in between shifts it by an hour).
   */
  private instantOf(target: number, ms: number): number {
    const now = this.minuteOfWeek(ms);
    let delta = (((target - now) % WEEK_MIN) + WEEK_MIN) % WEEK_MIN;
    if (delta === 0) delta = WEEK_MIN;
    let at = ms + Math.round(delta * MINUTE_MS);
    for (let i = 0; i < 3; i++) {
      let diff = (((target - this.minuteOfWeek(at)) % WEEK_MIN) + WEEK_MIN) % WEEK_MIN;
      if (diff > WEEK_MIN / 2) diff -= WEEK_MIN;
      if (Math.abs(diff) < 1 / 120) break;
      const next = at + Math.round(diff * MINUTE_MS);
      // A wall time that does not exist (skipped by a DST change) is reached at the jump itself.
      if (next <= ms) break;
      at = next;
    }
    return at;
  }

  private boundaries(kind: 'start' | 'end' | 'both'): number[] {
    const out: number[] = [];
    for (const i of this.intervals) {
      if (kind !== 'end') out.push(i.start % WEEK_MIN);
      if (kind !== 'start') out.push(i.end % WEEK_MIN);
    }
    return out;
  }

  state(ms: number): ScheduleState {
    const open = this.isOpen(ms);
    let nextChangeAt = Infinity;
    for (const b of this.boundaries('both')) nextChangeAt = Math.min(nextChangeAt, this.instantOf(b, ms));
    return { open, nextChangeAt, detail: `${open ? 'inside' : 'outside'} the schedule windows ${this.description}` };
  }

  /** When a window is open next: `ms` itself when one is open now. */
  nextOpenAt(ms: number): number {
    if (this.isOpen(ms)) return ms;
    let best = Infinity;
    for (const b of this.boundaries('start')) best = Math.min(best, this.instantOf(b, ms));
    return best;
  }
}
