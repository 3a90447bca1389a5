import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { DemoSummary } from '../demo/run-demo.js';

/**
 * `npm run bench:encodings`: the demo federation (generated USB-inspection images, 3 agents as
 * separate processes, the same seed every time) once per update encoding, and per encoding the
 * bytes agents sent per round and the final global model's accuracy on every agent's local test
 * split, next to f32. Goals: f16 halves the bytes with <= 0.1 point accuracy loss; q8 cuts them
 * >= 3.9x with <= 0.5 point loss.
 *
 *   --variants LIST   f32,f16,q8,f16+delta,q8+delta (default)   --rounds N (12)
 *   --seeds LIST      42 (default); several seeds show how much the accuracy moves from run to run
 *   --scale X         data set size factor (1)                   --keep (keep the demo folders)
 */

const { values: args } = parseArgs({
  options: {
    variants: { type: 'string', default: 'f32,f16,q8,f16+delta,q8+delta' },
    rounds: { type: 'string', default: '12' },
    seeds: { type: 'string', default: '42' },
    scale: { type: 'string', default: '1' },
    keep: { type: 'boolean', default: false },
  },
});
const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'fedline-bench-encodings-'));
const say = (s: string) => process.stdout.write(s + '\n');

function runDemo(variant: string, seed: string): Promise<DemoSummary> {
  const [encoding, delta] = variant.split('+');
  const out = join(root, `${variant.replace('+', '-')}-seed${seed}`);
  const argv = [
    CLI,
    'demo',
    '--out',
    out,
    '--rounds',
    args.rounds!,
    '--seed',
    seed,
    '--scale',
    args.scale!,
    '--encoding',
    encoding!,
    ...(delta === 'delta' ? ['--delta'] : []),
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr.on('data', (d: Buffer) => (log += d.toString()));
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`demo with ${variant}, seed ${seed} exited with ${code}:\n${log.slice(-3000)}`));
      resolve(JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as DemoSummary);
    });
  });
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length);

async function main(): Promise<void> {
  const variants = args.variants!.split(',');
  const seeds = args.seeds!.split(',');
  say(
    `fedline bench:encodings: the demo federation (3 agents, ${args.rounds} rounds, scale ${args.scale}) once per update encoding and seed: ${variants.join(', ')}; seeds ${seeds.join(', ')}`,
  );
  const runs = new Map<string, { summary: DemoSummary; seconds: number }>();
  for (const seed of seeds) {
    for (const variant of variants) {
      const t = Date.now();
      const summary = await runDemo(variant, seed);
      runs.set(`${variant}/${seed}`, { summary, seconds: (Date.now() - t) / 1000 });
      say(`  ${variant}, seed ${seed}: ${((Date.now() - t) / 1000).toFixed(0)} s`);
    }
  }
  const first = runs.values().next().value!.summary;
  const agents = first.agents;
  const stats = (variant: string, seed: string) => {
    const { summary } = runs.get(`${variant}/${seed}`)!;
    const upPerRound = mean(summary.rounds.map((x) => x.bytesUp));
    const acc = agents.map((a) => summary.finalModel.accuracy[a] ?? Number.NaN);
    return { upPerRound, acc, meanAcc: mean(acc) };
  };
  for (const seed of seeds) {
    say('');
    say(`seed ${seed}: final global model accuracy on each agent's local test split`);
    say(
      `${'encoding'.padEnd(10)} ${'up MB/round'.padStart(11)} ${'x smaller'.padStart(9)} ${agents.map((a) => a.padStart(8)).join(' ')} ${'mean'.padStart(7)} ${'loss, pt'.padStart(8)}`,
    );
    const ref = variants.includes('f32') ? stats('f32', seed) : null;
    for (const variant of variants) {
      const x = stats(variant, seed);
      const ratio = ref ? ref.upPerRound / x.upPerRound : Number.NaN;
      const loss = ref ? (ref.meanAcc - x.meanAcc) * 100 : Number.NaN;
      say(
        `${variant.padEnd(10)} ${(x.upPerRound / 1e6).toFixed(3).padStart(11)} ${ratio.toFixed(2).padStart(9)} ${x.acc.map((a) => a.toFixed(3).padStart(8)).join(' ')} ${x.meanAcc.toFixed(4).padStart(7)} ${loss.toFixed(2).padStart(8)}`,
      );
    }
  }
  if (variants.includes('f32')) {
    say('');
    say(`over ${seeds.length} seed(s): mean of (f32 accuracy - encoding accuracy), paired by seed, in percentage points; bytes per round against f32`);
    say(
      `${'encoding'.padEnd(10)} ${'x smaller'.padStart(9)} ${'mean acc'.padStart(8)} ${'mean loss'.padStart(9)} ${'min'.padStart(6)} ${'max'.padStart(6)}   goal`,
    );
    for (const variant of variants) {
      const ratios = seeds.map((s) => stats('f32', s).upPerRound / stats(variant, s).upPerRound);
      const losses = seeds.map((s) => (stats('f32', s).meanAcc - stats(variant, s).meanAcc) * 100);
      const ratio = mean(ratios);
      const loss = mean(losses);
      let goal = '';
      if (variant === 'f16') goal = `half the bytes (>= 1.95x) with <= 0.1 pt loss: ${ratio >= 1.95 && loss <= 0.1 ? 'met' : 'MISSED'}`;
      if (variant === 'q8') goal = `>= 3.9x with <= 0.5 pt loss: ${ratio >= 3.9 && loss <= 0.5 ? 'met' : 'MISSED'}`;
      say(
        `${variant.padEnd(10)} ${ratio.toFixed(2).padStart(9)} ${mean(seeds.map((s) => stats(variant, s).meanAcc))
          .toFixed(4)
          .padStart(8)} ${loss.toFixed(2).padStart(9)} ${Math.min(...losses)
          .toFixed(2)
          .padStart(6)} ${Math.max(...losses)
          .toFixed(2)
          .padStart(6)}   ${goal}`,
      );
    }
  }
  say('');
  say(
    'up MB/round: update chunk bytes the aggregator received per training round (3 agents; bundle headers included); the global model going down stays float32.',
  );
  say("accuracy: the final global model on each agent's local test split (the paper's measure); the mean over the agents.");
  say(`run times: ${[...runs.entries()].map(([k, r]) => `${k} ${r.seconds.toFixed(0)} s`).join(', ')}`);
}

main()
  .catch((err: Error) => {
    process.stderr.write(`bench:encodings failed: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    if (!args.keep) rmSync(root, { recursive: true, force: true });
    else say(`demo folders kept under ${root}`);
  });
