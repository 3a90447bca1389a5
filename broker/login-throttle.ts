/**
 * Failed logins slowed per client address: after `freeFailures` wrong passwords from one address,
 * every further failure shuts that address out for a delay that doubles each time (from
 * `baseDelayMs` up to `maxDelayMs`); while shut out, its logins are refused without checking the
 * password, so a password guesser costs the broker neither PBKDF2 time nor memory. An address is
 * forgotten `forgetAfterMs` after its last failure; at most `maxAddresses` are remembered (the
 * oldest go first). A successful login does not wipe the count: a guesser with one valid login of
 * its own cannot reset it. Pure: no I/O, clock injected.
 *
 * Also: a bound on PBKDF2 checks running at once (they run on libuv's thread pool, off the event
 * loop), so that many addresses guessing together cannot take every core.
 */

export interface LoginThrottleOptions {
  /** Wrong passwords an address may send before it is slowed down. Default 5. */
  freeFailures: number;
  /** First shut-out after the free failures, doubled at each further failure. Default 1000 ms. */
  baseDelayMs: number;
  /** Longest shut-out. Default 60000 ms. */
  maxDelayMs: number;
  /** An address without failures for this long starts afresh. Default 600000 ms. */
  forgetAfterMs: number;
  /** Addresses remembered at most (memory bound). Default 10000. */
  maxAddresses: number;
}

export const DEFAULT_LOGIN_THROTTLE: Readonly<LoginThrottleOptions> = {
  freeFailures: 5,
  baseDelayMs: 1000,
  maxDelayMs: 60_000,
  forgetAfterMs: 600_000,
  maxAddresses: 10_000,
};

interface AddressRecord {
  failures: number;
  lastFailureAt: number;
  blockedUntil: number;
}

export class LoginThrottle {
  private readonly o: LoginThrottleOptions;
  private readonly now: () => number;
  private readonly byAddress = new Map<string, AddressRecord>();

  constructor(options: Partial<LoginThrottleOptions> = {}, now: () => number = Date.now) {
    this.o = { ...DEFAULT_LOGIN_THROTTLE, ...options };
    this.now = now;
  }

  /** ms until `address` may try again; 0 when it may now. */
  blockedFor(address: string): number {
    const r = this.current(address);
    return r ? Math.max(0, r.blockedUntil - this.now()) : 0;
  }

  /** Record a wrong password from `address`; returns the shut-out it earned (0 while failures are free). */
  failed(address: string): number {
    const now = this.now();
    const r = this.current(address) ?? { failures: 0, lastFailureAt: now, blockedUntil: 0 };
    r.failures++;
    r.lastFailureAt = now;
    const over = r.failures - this.o.freeFailures;
    const delay = over > 0 ? Math.min(this.o.maxDelayMs, this.o.baseDelayMs * 2 ** Math.min(over - 1, 30)) : 0;
    r.blockedUntil = now + delay;
    // Re-insert so that the map stays ordered by last failure: the first entry is the oldest.
    this.byAddress.delete(address);
    this.byAddress.set(address, r);
    while (this.byAddress.size > this.o.maxAddresses) this.byAddress.delete(this.byAddress.keys().next().value!);
    return delay;
  }

  /** Addresses remembered now (for tests and metrics). */
  size(): number {
    return this.byAddress.size;
  }

  private current(address: string): AddressRecord | undefined {
    const r = this.byAddress.get(address);
    if (r && this.now() - r.lastFailureAt > this.o.forgetAfterMs && this.now() >= r.blockedUntil) {
      this.byAddress.delete(address);
      return undefined;
    }
    return r;
  }
}

/** Runs at most `limit` tasks at once; up to `maxQueued` more wait; beyond that run() answers null at once. */
export class TaskLimiter {
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly limit: number;
  private readonly maxQueued: number;

  constructor(limit: number, maxQueued: number) {
    this.limit = limit;
    this.maxQueued = maxQueued;
  }

  async run<T>(task: () => Promise<T>): Promise<T | null> {
    if (this.running >= this.limit) {
      if (this.waiting.length >= this.maxQueued) return null;
      // The finishing task hands its slot over: `running` already counts this one.
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running++;
    }
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }
}
