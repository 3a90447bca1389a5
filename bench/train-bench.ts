import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpus, loadavg, totalmem } from 'node:os';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * `npm run bench:train`: one training step (forward, backward, SGD update) of the issue-3 VGG-style
 * network (bench/vgg-bench-model.ts: 6 conv layers, 64x64x3, batch 32, 544,740 parameters) on each
 * tfjs backend available here and on PyTorch CPU with one thread, side by side: every backend runs
 * in its own process, kept alive, and the rounds interleave them so that load from other work on the
 * machine hits all of them alike. Prints best and median ms/step and the ratios to PyTorch.
 *
 *   npm run bench:train -- [--rounds 5] [--steps 3] [--backends tensorflow,wasm,cpu,pytorch] [--json FILE]
 */

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, '..', '..');

interface Worker {
  name: string;
  proc: ChildProcess;
  lines: Interface;
  next(): Promise<Record<string, unknown>>;
}

function startWorker(name: string, command: string, args: string[]): Worker {
  const proc = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'], cwd: REPO });
  const lines = createInterface({ input: proc.stdout! });
  const queue: string[] = [];
  const waiting: ((line: string | null) => void)[] = [];
  lines.on('line', (l) => (waiting.length ? waiting.shift()!(l) : queue.push(l)));
  lines.on('close', () => {
    while (waiting.length) waiting.shift()!(null);
  });
  const next = async (): Promise<Record<string, unknown>> => {
    for (;;) {
      const line = queue.length ? queue.shift()! : await new Promise<string | null>((r) => waiting.push(r));
      if (line === null) return { unavailable: `${name} worker exited` };
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        // a stray line from a library: skip it
      }
    }
  };
  return { name, proc, lines, next };
}

/** A python3 that can `import torch`: `python3` on PATH, else Debian's /usr/bin/python3 (package python3-torch). */
function findTorchPython(): { python: string | null; tried: string[] } {
  const tried: string[] = [];
  for (const python of ['python3', '/usr/bin/python3']) {
    const r = spawnSync(python, ['-c', 'import torch'], { stdio: 'ignore', timeout: 60_000 });
    tried.push(`${python}: ${r.error ? r.error.message : `exit ${r.status}`}`);
    if (r.status === 0) return { python, tried };
  }
  return { python: null, tried };
}

/** The CPU's vector extensions (Linux): PyTorch uses AVX-512 where present, WebAssembly SIMD is 128-bit. */
function simdFlags(): string {
  try {
    const flags = new Set((/^flags\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '').split(/\s+/));
    const have = ['avx512f', 'avx2', 'fma', 'sse4_2'].filter((f) => flags.has(f));
    return have.length ? ` (${have.join(' ')})` : '';
  } catch {
    return '';
  }
}

const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** A worker per wanted backend, warmed up one at a time; backends that cannot run here are skipped with the reason. */
async function startWorkers(wanted: string[], warmup: number): Promise<{ workers: Worker[]; info: Map<string, Record<string, unknown>>; skipped: string[] }> {
  const workers: Worker[] = [];
  const info = new Map<string, Record<string, unknown>>();
  const skipped: string[] = [];
  for (const name of wanted) {
    let w: Worker;
    if (name === 'pytorch') {
      const { python, tried } = findTorchPython();
      if (!python) {
        skipped.push(`pytorch: skipped, no python3 can import torch (${tried.join('; ')}); on Debian: apt-get install python3-torch`);
        continue;
      }
      w = startWorker(name, python, [join(REPO, 'bench', 'torch-train-worker.py'), String(warmup)]);
    } else {
      w = startWorker(name, process.execPath, [join(HERE, 'train-worker.js'), name, name === 'cpu' ? '1' : String(warmup)]);
    }
    // Warm up one at a time: warm-up steps in parallel would slow each other down.
    const first = await w.next();
    if (first.unavailable) {
      skipped.push(`${name}: skipped, ${String(first.unavailable)}`);
      w.proc.kill();
      continue;
    }
    info.set(name, first);
    workers.push(w);
  }
  return { workers, info, skipped };
}

/** `rounds` rounds of `steps` training steps per backend (pure-JS cpu: `cpuRounds` rounds of 1 step), interleaved; then the workers quit. */
async function measure(
  workers: Worker[],
  rounds: number,
  steps: number,
  cpuRounds: number,
): Promise<{ times: Map<string, number[]>; cpuTimes: Map<string, number[]> }> {
  const times = new Map<string, number[]>(workers.map((w) => [w.name, []]));
  const cpuTimes = new Map<string, number[]>(workers.map((w) => [w.name, []]));
  for (let r = 0; r < rounds; r++) {
    // Rotate the order each round: no backend always runs right after the same neighbour.
    const order = workers.map((_, i) => workers[(i + r) % workers.length]!);
    for (const w of order) {
      if (w.name === 'cpu' && r >= cpuRounds) continue;
      w.proc.stdin!.write(JSON.stringify({ steps: w.name === 'cpu' ? 1 : steps }) + '\n');
      const res = await w.next();
      if (!Array.isArray(res.ms)) throw new FedlineError(ErrorCodes.ABORTED, `${w.name}: ${JSON.stringify(res)}`);
      times.get(w.name)!.push(...(res.ms as number[]));
      cpuTimes.get(w.name)!.push(...((res.cpuMs as number[] | undefined) ?? []));
    }
    process.stdout.write(`  round ${r + 1}/${rounds} done\n`);
  }
  for (const w of workers) {
    w.proc.stdin!.end(JSON.stringify({ quit: true }) + '\n');
  }
  await Promise.all(workers.map((w) => new Promise<void>((res) => (w.proc.exitCode !== null ? res() : w.proc.once('exit', () => res())))));
  return { times, cpuTimes };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '5' },
      steps: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '2' },
      backends: { type: 'string', default: 'tensorflow,wasm,cpu,pytorch' },
      'cpu-rounds': { type: 'string', default: '1' },
      json: { type: 'string' },
    },
  });
  const rounds = Number(values.rounds);
  const steps = Number(values.steps);
  const warmup = Number(values.warmup);
  const wanted = values.backends!.split(',').map((s) => s.trim());
  const load0 = loadavg();
  const machine = `${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}${simdFlags()}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
  console.log(`bench:train  VGG-style net (6 conv 3x3: 16,32,64,64,128,128; dense 128; 4 classes), 64x64x3, batch 32, SGD`);
  console.log(`machine: ${machine}; load average at start ${load0.map((l) => l.toFixed(2)).join(' ')}`);
  console.log(`${rounds} rounds x ${steps} steps per backend, interleaved (pure-JS cpu: ${values['cpu-rounds']} round(s) x 1 step, it is slow)\n`);

  const { workers, info, skipped } = await startWorkers(wanted, warmup);
  const { times, cpuTimes } = await measure(workers, rounds, steps, Number(values['cpu-rounds']));

  const torch = times.get('pytorch');
  const torchCpu = cpuTimes.get('pytorch');
  const tBest = torch?.length ? Math.min(...torch) : null;
  const tMed = torch?.length ? median(torch) : null;
  const tCpu = torchCpu?.length ? Math.min(...torchCpu) : null;
  const rows = workers.map((w) => {
    const v = times.get(w.name)!;
    const c = cpuTimes.get(w.name)!;
    const best = Math.min(...v);
    const med = median(v);
    const cpuBest = c.length ? Math.min(...c) : NaN;
    return {
      backend: w.name,
      detail: String(info.get(w.name)?.detail ?? ''),
      steps: v.length,
      bestMs: best,
      medianMs: med,
      cpuBestMs: cpuBest,
      ratioBest: tBest ? best / tBest : null,
      ratioMedian: tMed ? med / tMed : null,
      ratioCpu: tCpu ? cpuBest / tCpu : null,
    };
  });
  // Wall time is what a user waits; CPU time of the process is what the backend costs, and is less
  // disturbed by other work on a shared machine. Both are shown.
  console.log('\nbackend      steps   wall ms/step: best  median   CPU ms/step: best   vs PyTorch: wall best / median / CPU best   what');
  for (const r of rows) {
    const ratio = r.ratioBest !== null ? `${r.ratioBest.toFixed(2)}x / ${r.ratioMedian!.toFixed(2)}x / ${r.ratioCpu!.toFixed(2)}x` : '-';
    console.log(
      `${r.backend.padEnd(12)} ${String(r.steps).padStart(5)}  ${r.bestMs.toFixed(1).padStart(17)}  ${r.medianMs.toFixed(1).padStart(6)}  ${r.cpuBestMs.toFixed(1).padStart(18)}  ${ratio.padStart(40)}   ${r.detail}`,
    );
  }
  for (const s of skipped) console.log(s);
  const wasm = rows.find((r) => r.backend === 'wasm');
  const load1 = loadavg();
  console.log(`\nload average at end ${load1.map((l) => l.toFixed(2)).join(' ')}`);
  if (wasm && wasm.ratioBest !== null) {
    console.log(
      `wasm / PyTorch: ${wasm.ratioBest.toFixed(2)}x (best wall time of each), ${wasm.ratioMedian!.toFixed(2)}x (median wall), ${wasm.ratioCpu!.toFixed(2)}x (best CPU time); ` +
        `target <= 3x: ${wasm.ratioBest <= 3 ? 'met' : 'NOT met'} (best wall time)`,
    );
  } else {
    console.log('wasm / PyTorch: not measured (both backends are needed)');
  }
  if (values.json) writeFileSync(values.json, JSON.stringify({ machine, loadStart: load0, loadEnd: load1, rounds, steps, rows, skipped }, null, 2) + '\n');
}

main().catch((err: Error) => {
  console.error(`bench:train failed: ${err.message}`);
  process.exit(1);
});
