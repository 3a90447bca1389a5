import { readFileSync } from 'node:fs';
import type { FsModelStore, StoredModel } from '../aggregator/model-store.js';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import type { ModelMeta } from '../shared/protocol/messages.js';
import { mulberry32 } from '../shared/util/random.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import type { TensorValues } from '../shared/bundle/encoded-update.js';

/**
 * Synthetic models for the benchmarks: the tensor layout of a real network (VGG-19 with the
 * paper's 4-class head: 139.6 M parameters, 558 MB of float32) filled with synthetic weights, no
 * training. Values come from a 4 MiB pattern of normally distributed numbers (a per-seed PRNG),
 * read with a per-tensor offset: producing any range costs a memory copy, as reading trained
 * tensors from memory would, and needs no model-sized buffer.
 */

export interface TensorShape {
  name: string;
  shape: number[];
}

/** VGG-19 (Simonyan & Zisserman 2014) at 224x224x3 with a 4-way classifier: 139,586,628 parameters. */
export function vgg19Shapes(classes = 4): TensorShape[] {
  const convs: [string, number, number][] = [];
  const blocks = [
    [64, 2],
    [128, 2],
    [256, 4],
    [512, 4],
    [512, 4],
  ] as const;
  let cin = 3;
  blocks.forEach(([cout, n], b) => {
    for (let i = 0; i < n; i++) {
      convs.push([`block${b + 1}_conv${i + 1}`, cin, cout]);
      cin = cout;
    }
  });
  const out: TensorShape[] = [];
  for (const [name, ci, co] of convs) out.push({ name: `${name}/kernel`, shape: [3, 3, ci, co] }, { name: `${name}/bias`, shape: [co] });
  out.push({ name: 'fc1/kernel', shape: [7 * 7 * 512, 4096] }, { name: 'fc1/bias', shape: [4096] });
  out.push({ name: 'fc2/kernel', shape: [4096, 4096] }, { name: 'fc2/bias', shape: [4096] });
  out.push({ name: 'predictions/kernel', shape: [4096, classes] }, { name: 'predictions/bias', shape: [classes] });
  return out;
}

/** A small model of `params` parameters (one dense layer and a head), for the round-overhead figure. */
export function denseShapes(params: number): TensorShape[] {
  const width = Math.max(1, Math.floor(Math.sqrt(params)));
  return [
    { name: 'dense/kernel', shape: [width, width - 1] },
    { name: 'dense/bias', shape: [width] },
    { name: 'predictions/kernel', shape: [width, 4] },
    { name: 'predictions/bias', shape: [4] },
  ];
}

export function parameterCount(shapes: readonly TensorShape[]): number {
  return shapes.reduce((s, t) => s + elementCount(t.shape), 0);
}

const PATTERN = 1 << 20;

function pattern(seed: number): Float32Array {
  const rng = mulberry32(seed);
  const p = new Float32Array(PATTERN);
  for (let i = 0; i < PATTERN; i += 2) {
    // Box-Muller: weights of a trained network look roughly normal, around zero.
    const u = Math.max(rng(), 1e-12);
    const v = rng();
    const r = Math.sqrt(-2 * Math.log(u)) * 0.05;
    p[i] = r * Math.cos(2 * Math.PI * v);
    p[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return p;
}

/** Synthetic values for every tensor of `shapes`, deterministic for a seed. */
export function syntheticTensors(shapes: readonly TensorShape[], seed: number): TensorValues[] {
  const p = pattern(seed);
  return shapes.map((t, i) => {
    const shift = (i * 7919 + seed * 104729) % PATTERN;
    return {
      name: t.name,
      shape: [...t.shape],
      read(start: number, out: Float32Array): void {
        let done = 0;
        let at = (shift + start) % PATTERN;
        while (done < out.length) {
          const n = Math.min(out.length - done, PATTERN - at);
          out.set(p.subarray(at, at + n), done);
          done += n;
          at = 0;
        }
      },
    };
  });
}

/** Write a synthetic version 0 into a model store (streamed: no model-sized buffer). */
export async function writeSyntheticModel(store: FsModelStore, shapes: readonly TensorShape[], seed: number): Promise<StoredModel> {
  const meta: ModelMeta = {
    kind: 'model',
    version: 0,
    round: 0,
    topology: { synthetic: true, note: 'benchmark model: tensor layout only, no layers' },
    headTensors: shapes.filter((t) => t.name.startsWith('predictions/')).map((t) => t.name),
    classes: [...INSPECTION_CLASSES],
    inputShape: [224, 224, 3],
    normalization: 'imagenet',
    createdAt: Date.now(),
  };
  const writer = await store.createVersion(meta, shapes);
  const values = syntheticTensors(shapes, seed);
  const block = new Float32Array(1 << 20);
  for (const t of values) {
    const count = elementCount(t.shape);
    for (let start = 0; start < count; start += block.length) {
      const part = block.subarray(0, Math.min(block.length, count - start));
      t.read(start, part);
      await writer.write(new Uint8Array(part.buffer, 0, part.byteLength));
    }
  }
  return writer.commit();
}

/** Peak and current resident set of a process, MiB (Linux /proc). */
export function memoryOf(pid: number | 'self'): { peakMiB: number; rssMiB: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { peakMiB: kib('VmHWM') / 1024, rssMiB: kib('VmRSS') / 1024 };
  } catch {
    return null;
  }
}

/** CPU time (user + system) a process has used so far, ms (Linux /proc; clock ticks of 10 ms). */
export function cpuMsOf(pid: number | 'self'): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return Number.NaN;
  }
}
