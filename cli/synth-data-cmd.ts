import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { EXPERIMENT_PARTS, generateExperimentData, REFERENCE_SETS, type ExperimentPart, type ReferenceSet } from '../synthetic-data/generate.js';
import { invalidOption } from './option-checks.js';

import { DATASET_USAGE as USAGE } from './usage.js';

/** `fedline dataset synth`: the experiment's generated data set (synthetic-data/generate.ts generateExperimentData). */
export async function runDataset(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== 'synth') {
    process.stderr.write(USAGE + '\n');
    process.exitCode = 2;
    return;
  }
  const { values } = parseArgs({
    args: rest,
    options: {
      out: { type: 'string' },
      seed: { type: 'string', default: '42' },
      size: { type: 'string', default: '32' },
      scale: { type: 'string', default: '1' },
      parts: { type: 'string', default: EXPERIMENT_PARTS.join(',') },
      references: { type: 'string', default: 'classic' },
    },
    strict: true,
  });
  if (!values.out) {
    process.stderr.write(`fedline dataset synth: --out DIR is required\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const seed = Number(values.seed);
  const size = Number(values.size);
  const scale = Number(values.scale);
  const parts = values.parts!.split(',').map((p) => p.trim()) as ExperimentPart[];
  if (!Number.isInteger(seed) || seed < 0) throw invalidOption(`--seed must be a non-negative integer, got ${values.seed}`);
  if (!Number.isInteger(size) || size < 16 || size > 512) throw invalidOption(`--size must be an integer from 16 to 512, got ${values.size}`);
  if (!(scale > 0)) throw invalidOption(`--scale must be positive, got ${values.scale}`);
  const unknown = parts.filter((p) => !(EXPERIMENT_PARTS as readonly string[]).includes(p));
  if (unknown.length) throw invalidOption(`--parts: unknown part(s) ${unknown.join(', ')} (known: ${EXPERIMENT_PARTS.join(', ')})`);
  const references = referenceSetOption(values.references!);
  const started = Date.now();
  const result = await generateExperimentData({ out: resolve(values.out), seed, size, scale, parts, references });
  const line = (counts: Record<string, number>) =>
    Object.entries(counts)
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
  for (const c of result.clients) process.stdout.write(`${c.name}: ${line(c.counts)}  -> ${c.dir}\n`);
  if (result.external) process.stdout.write(`external: ${line(result.external.counts)}  -> ${result.external.dir}\n`);
  for (const p of result.probes)
    process.stdout.write(`probe ${p.name} (${p.client}'s product, ${p.defectOf}'s ${p.defect}): NOT_OKAY ${p.count}  -> ${p.dir}\n`);
  if (result.reference) process.stdout.write(`reference: ${line(result.reference.counts)}  -> ${result.reference.dir}\n`);
  process.stdout.write(`${result.files} images of ${size}x${size} px in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
}

/** `--references classic|varied-tongues` (dataset synth, pretrain --synth). */
export function referenceSetOption(value: string): ReferenceSet {
  if (!(REFERENCE_SETS as readonly string[]).includes(value)) throw invalidOption(`--references must be one of ${REFERENCE_SETS.join(', ')}, got "${value}"`);
  return value as ReferenceSet;
}
