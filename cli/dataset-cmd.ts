import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { generateDataset } from '../dataset/synth.js';

/** `fedline dataset synth --out DIR [--seed N] [--size PX] [--scale X]` */
export async function runDataset(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== 'synth') {
    process.stderr.write('usage: fedline dataset synth --out DIR [--seed N] [--size PX] [--scale X]\n');
    process.exitCode = 2;
    return;
  }
  const { values } = parseArgs({
    args: rest,
    options: { out: { type: 'string' }, seed: { type: 'string', default: '42' }, size: { type: 'string', default: '32' }, scale: { type: 'string', default: '1' } },
    strict: true,
  });
  if (!values.out) {
    process.stderr.write('fedline dataset synth: --out DIR is required\n');
    process.exitCode = 2;
    return;
  }
  const seed = Number(values.seed);
  const size = Number(values.size);
  const scale = Number(values.scale);
  if (!Number.isInteger(seed) || seed < 0) throw new Error(`--seed must be a non-negative integer, got ${values.seed}`);
  if (!Number.isInteger(size) || size < 16 || size > 512) throw new Error(`--size must be an integer from 16 to 512, got ${values.size}`);
  if (!(scale > 0)) throw new Error(`--scale must be positive, got ${values.scale}`);
  const started = Date.now();
  const result = await generateDataset({ out: resolve(values.out), seed, size, scale });
  for (const c of result.clients) process.stdout.write(`${c.name}: ${Object.entries(c.counts).map(([k, v]) => `${k} ${v}`).join(', ')}  -> ${c.dir}\n`);
  process.stdout.write(`${result.files} images of ${size}x${size} px in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
}
