/**
 * A preload that shows where a process's memory is, for the bench:scale memory work
 * (docs/scaling.md, "What grows with the sites at 1 MB"). Pass it to the aggregator with the
 * aggregator's own flags, for example:
 *
 *   BENCH_RECEIVER_FLAGS="--initial-old-space-size=96 --import=./dist/bench/memory-probe.js" \
 *   MEMORY_PROBE_DIR=/tmp/probe node dist/bench/scale.js --agents 10,300 --sizes 1 --nodes 1
 *
 * It writes, into MEMORY_PROBE_DIR (default: the OS temp folder), per process:
 * - `memory-<pid>.jsonl`: each time the peak RSS (VmHWM) has grown by 3 MiB, one line with
 *   `process.memoryUsage()`, V8's heap spaces (used and committed) and /proc/self/smaps summed
 *   by kind: glibc's main heap (`[heap]`), anonymous mappings under 1 MiB (mostly V8's 256 KiB
 *   pages), larger anonymous mappings, the node binary, other files;
 * - with MEMORY_PROBE_ALLOC=1, `alloc-<pid>.heapprofile` at exit: V8's sampling heap profile
 *   with the objects collected by minor and major GCs kept, i.e. every JavaScript allocation
 *   (garbage included) by call stack (open it in Chrome DevTools, Memory tab);
 * - with MEMORY_PROBE_SNAPSHOT_AT_MIB=N, `heap-peak-<pid>.heapsnapshot` as soon as the peak RSS
 *   reaches N MiB (once): what is alive near the peak;
 * - with MEMORY_PROBE_SNAPSHOT=1, `heap-<pid>.heapsnapshot` at exit: what the process still holds
 *   when it ends (after the round, for the aggregator), for `node scripts/heap-summary.mjs A B`.
 */
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getHeapSpaceStatistics, writeHeapSnapshot } from 'node:v8';

const DIR = process.env.MEMORY_PROBE_DIR ?? tmpdir();
mkdirSync(DIR, { recursive: true }); // a fresh MEMORY_PROBE_DIR need not exist yet
const MiB = (bytes: number): number => Math.round((bytes / 1048576) * 10) / 10;
const started = Date.now();

/** Resident memory of /proc/self/smaps, MiB, by kind of mapping. */
function smapsByKind(): Record<string, number> {
  const out: Record<string, number> = {};
  let kind: string | null = null;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) {
      const name = m[3] ?? '';
      const sizeBytes = parseInt(m[2]!, 16) - parseInt(m[1]!, 16);
      if (name === '') kind = sizeBytes < 1048576 ? 'anon<1MiB' : 'anon>=1MiB';
      else if (name.startsWith('/')) kind = name.endsWith('/node') ? 'node-binary' : 'files';
      else kind = name;
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss && kind) out[kind] = (out[kind] ?? 0) + Number(rss[1]) / 1024;
  }
  for (const k of Object.keys(out)) out[k] = Math.round(out[k]! * 10) / 10;
  return out;
}

function peakRssMiB(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

let lastPeakMiB = 0;
const sampler = setInterval(() => {
  const peak = peakRssMiB();
  if (peak - lastPeakMiB < 3) return;
  lastPeakMiB = peak;
  const u = process.memoryUsage();
  const spaces = Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, { used: MiB(s.space_used_size), committed: MiB(s.space_size) }]));
  const sample = {
    ms: Date.now() - started,
    /** Wall-clock time, to match the sample with the process's log. */
    at: new Date().toISOString(),
    peakRss: Math.round(peak * 10) / 10,
    heapTotal: MiB(u.heapTotal),
    heapUsed: MiB(u.heapUsed),
    external: MiB(u.external),
    arrayBuffers: MiB(u.arrayBuffers),
    spaces,
    smaps: smapsByKind(),
  };
  appendFileSync(join(DIR, `memory-${process.pid}.jsonl`), `${JSON.stringify(sample)}\n`);
}, 50);
sampler.unref();

if (process.env.MEMORY_PROBE_ALLOC === '1') {
  const session = new Session();
  session.connect();
  session.post('HeapProfiler.enable');
  session.post('HeapProfiler.startSampling', {
    samplingInterval: 16384,
    includeObjectsCollectedByMinorGC: true,
    includeObjectsCollectedByMajorGC: true,
  });
  process.on('exit', () => {
    // An in-process inspector session answers synchronously, so this still runs before exit.
    session.post('HeapProfiler.stopSampling', (err, result) => {
      if (!err) writeFileSync(join(DIR, `alloc-${process.pid}.heapprofile`), JSON.stringify(result.profile));
    });
  });
}

const snapshotAtMiB = Number(process.env.MEMORY_PROBE_SNAPSHOT_AT_MIB ?? 0);
if (snapshotAtMiB > 0) {
  // Once, when the peak RSS first reaches the given MiB: what is alive at the peak, not after it.
  const watch = setInterval(() => {
    if (peakRssMiB() < snapshotAtMiB) return;
    clearInterval(watch);
    writeHeapSnapshot(join(DIR, `heap-peak-${process.pid}.heapsnapshot`));
  }, 20);
  watch.unref();
}

if (process.env.MEMORY_PROBE_SNAPSHOT === '1') {
  // Synchronous, so it completes in the exit handler.
  process.on('exit', () => writeHeapSnapshot(join(DIR, `heap-${process.pid}.heapsnapshot`)));
}
