/**
 * Collections the aggregator asks V8 for at the points where it knows garbage is due, so that
 * the memory the receive path churns through stays bounded whatever the number of sites.
 *
 * Why (docs/scaling.md, "The aggregator's memory at small updates"): MQTT.js allocates about two
 * bytes of Buffers per byte received (a Buffer per 64 KiB socket read, and a copy of every
 * 256 KiB chunk). Those are garbage as soon as the chunk is on disk, but V8 frees a Buffer's
 * memory only when a young-generation collection (scavenge) finds its JavaScript object dead, and
 * it schedules scavenges by the JavaScript objects allocated, not by the Buffer bytes behind them:
 * in a 300-site round up to ~30 MiB of dead Buffers piled up between two scavenges, in glibc's
 * heap, which then stayed fragmented (the aggregator's `[heap]` mapping at 39 MiB against 14 at
 * 10 sites). A scavenge every few MiB received bounds that pile; it costs about a millisecond
 * (the young generation's live objects are few). And once a round's uploads end, a full
 * collection frees what the uploads promoted to the old generation (the aggregator runs with a
 * 96 MiB floor under that generation's limit, aggregator/node-flags.ts, so without it nothing
 * would collect there for many rounds), before FedAvg and the model's publication allocate
 * their buffers.
 */

/** V8's `gc()` as `--expose-gc` makes it global. */
type GcFunction = (options?: { type?: 'minor' }) => void;

export interface Collector {
  /** A young-generation collection (scavenge). */
  minor(): void;
  /** A full collection. */
  major(): void;
}

/** V8's collector, when the process runs with `--expose-gc` (aggregator/node-flags.ts); null otherwise (tests, an embedder). */
export function v8Collector(): Collector | null {
  const gc = (globalThis as { gc?: unknown }).gc;
  if (typeof gc !== 'function') return null;
  const collect = gc as GcFunction;
  // gc() without options is the full collection; Node 20's V8 takes `{ type: 'major' }` for a minor one.
  return { minor: () => collect({ type: 'minor' }), major: () => collect() };
}

/** Bytes received between two scavenges: about 8 MiB of the Buffers MQTT.js allocates for them. */
export const MINOR_GC_EVERY_BYTES = 4 * 1024 * 1024;

export class GcPacer {
  private sinceMinorBytes = 0;
  private minorCount = 0;
  private majorCount = 0;

  constructor(
    private readonly collector: Collector | null,
    private readonly minorEveryBytes: number = MINOR_GC_EVERY_BYTES,
  ) {
    if (!(minorEveryBytes > 0)) throw new RangeError(`minorEveryBytes must be > 0, got ${minorEveryBytes}`);
  }

  /** Whether collections are asked for at all (false without `--expose-gc`). */
  get active(): boolean {
    return this.collector !== null;
  }

  /** Collections asked for so far. */
  get counts(): { minor: number; major: number } {
    return { minor: this.minorCount, major: this.majorCount };
  }

  /** A message of `bytes` arrived: a scavenge once `minorEveryBytes` have since the last one. */
  received(bytes: number): void {
    if (!this.collector) return;
    this.sinceMinorBytes += bytes;
    if (this.sinceMinorBytes < this.minorEveryBytes) return;
    this.sinceMinorBytes = 0;
    this.minorCount++;
    this.collector.minor();
  }

  /** A round's uploads ended (the round closed): a full collection, once. */
  uploadsEnded(): void {
    if (!this.collector) return;
    this.sinceMinorBytes = 0;
    this.majorCount++;
    this.collector.major();
  }
}
