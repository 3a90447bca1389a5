/**
 * Counters of what a service rejected and why, by error code. Exposed in status and events and
 * asserted by tests: "logged and counted" is checked, not assumed.
 */
export class Counters {
  private readonly values = new Map<string, number>();

  inc(key: string, by = 1): void {
    this.values.set(key, (this.values.get(key) ?? 0) + by);
  }

  get(key: string): number {
    return this.values.get(key) ?? 0;
  }

  total(): number {
    let s = 0;
    for (const v of this.values.values()) s += v;
    return s;
  }

  toJSON(): Record<string, number> {
    return Object.fromEntries([...this.values.entries()].sort(([a], [b]) => a.localeCompare(b)));
  }
}
