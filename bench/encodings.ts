import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { DemoSummary } from '../cli/demo.js';

/**
 * `npm run bench:encodings`: the demo federation (generated USB-inspection images, 3 agents as
 * separate processes, the same seed every time) once per update encoding, and per encoding the
 * bytes agents sent per round and the final global model's accuracy on every agent's local test
 * split, next to f32. Goals: f16 halves the bytes with <= 0.1 point accuracy loss; q8 cuts them
 * >= 3.9x with <= 0.5 point loss.
 *
 *   --variants LIST   f32,f16,q8,f16+delta,q8+delta (default)   --rounds N (12)   --seed N (42)
 *   --scale X         data set size factor (1)                   --keep (keep the demo folders)
 */

const { values: args } = parseArgs({
  options: {
    variants: { type: 'string', default: 'f32,f16,q8,f16+delta,q8+delta' },
    rounds: { type: 'string', default: '12' },
    seed: { type: 'string', default: '42' },
    scale: { type: 'string', default: '1' },
    keep: { type: 'boolean', default: false },
  },
});
const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'fedline-bench-encodings-'));
const say = (s: string) => process.stdout.write(s + '\n');

function runDemo(variant: string): Promise<DemoSummary> {
  const [encoding, delta] = variant.split('+');
  const out = join(root, variant.replace('+', '-'));
  const argv = [CLI, 'demo', '--out', out, '--rounds', args.rounds!, '--seed', args.seed!, '--scale', args.scale!, '--encoding', encoding!, ...(delta === 'delta' ? ['--delta'] : [])];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr.on('data', (d: Buffer) => (log += d.toString()));
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`demo with ${variant} exited with ${code}:\n${log.slice(-3000)}`));
      resolve(JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as DemoSummary);
    });
  });
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length);

async function main(): Promise<void> {
  const variants = args.variants!.split(',');
  say(`fedline bench:encodings: the demo federation (3 agents, seed ${args.seed}, ${args.rounds} rounds, scale ${args.scale}) once per update encoding: ${variants.join(', ')}`);
  const results: { variant: string; summary: DemoSummary; seconds: number }[] = [];
  for (const variant of variants) {
    const t = Date.now();
    const summary = await runDemo(variant);
    results.push({ variant, summary, seconds: (Date.now() - t) / 1000 });
    say(`  ${variant}: done in ${((Date.now() - t) / 1000).toFixed(0)} s`);
  }
  const agents = results[0]!.summary.agents;
  const row = (r: (typeof results)[number]) => {
    const rounds = r.summary.rounds;
    const upPerRound = mean(rounds.map((x) => x.bytesUp));
    const acc = agents.map((a) => r.summary.finalModel.accuracy[a] ?? Number.NaN);
    return { upPerRound, acc, meanAcc: mean(acc), downPerRound: mean(rounds.map((x) => x.bytesDown)) };
  };
  const base = results.find((r) => r.variant === 'f32');
  const ref = base ? row(base) : null;
  say('');
  say(`${'encoding'.padEnd(10)} ${'up MB/round'.padStart(11)} ${'x smaller'.padStart(9)} ${agents.map((a) => a.padStart(8)).join(' ')} ${'mean acc'.padStart(8)} ${'loss, pt'.padStart(8)}   goal`);
  for (const r of results) {
    const x = row(r);
    const ratio = ref ? ref.upPerRound / x.upPerRound : Number.NaN;
    const loss = ref ? (ref.meanAcc - x.meanAcc) * 100 : Number.NaN;
    let goal = '';
    if (r.variant === 'f16') goal = `bytes halved (>= 1.95x) and loss <= 0.1 pt: ${ratio >= 1.95 && loss <= 0.1 ? 'met' : 'MISSED'}`;
    if (r.variant === 'q8') goal = `>= 3.9x and loss <= 0.5 pt: ${ratio >= 3.9 && loss <= 0.5 ? 'met' : 'MISSED'}`;
    say(`${r.variant.padEnd(10)} ${(x.upPerRound / 1e6).toFixed(3).padStart(11)} ${ratio.toFixed(2).padStart(9)} ${x.acc.map((a) => a.toFixed(3).padStart(8)).join(' ')} ${x.meanAcc.toFixed(4).padStart(8)} ${loss.toFixed(2).padStart(8)}   ${goal}`);
  }
  say('');
  say('up MB/round: update chunk bytes the aggregator received per training round (all agents; headers included); the global model going down stays float32.');
  say("accuracy: the final global model on each agent's local test split (the paper's measure); loss in percentage points of the mean against f32.");
  say(`run times: ${results.map((r) => `${r.variant} ${r.seconds.toFixed(0)} s`).join(', ')}`);
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
