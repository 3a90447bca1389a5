import { simdKernels, type FoldMode } from './fedavg-simd.js';

/**
 * Federated averaging (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks
 * from Decentralized Data", Algorithm 1): the new global weights are the average of the clients'
 * weights, each weighted by its number of local training samples n_k:
 *
 *     w_{t+1} = sum_k (n_k / n) * w_{t+1}^k,   n = sum_k n_k
 *
 * Pure math on typed arrays; it knows neither MQTT nor tfjs. Sums run in float64 and in a fixed
 * order (the caller sorts clients), so the same inputs always give bit-identical float32 weights,
 * and the result matches a float64 reference within float32 rounding.
 */

/** acc[i] += weight * values[i] */
function accumulateWeighted(acc: Float64Array, values: Float32Array, weight: number): void {
  const n = values.length;
  if (acc.length < n) throw new RangeError(`accumulator of ${acc.length} is shorter than ${n} values`);
  // Plain indexed loop: V8 compiles it to tight scalar code; no allocation per element.
  for (let i = 0; i < n; i++) acc[i] += weight * values[i]!;
}

/** out[i] = acc[i] / totalWeight, rounded to float32. */
function finishAverage(acc: Float64Array, totalWeight: number, out: Float32Array): void {
  const n = out.length;
  const inv = 1 / totalWeight;
  for (let i = 0; i < n; i++) out[i] = acc[i]! * inv;
}

export interface WeightedTensors {
  /** Who sent it; results are folded in ascending order of this key for reproducible sums. */
  id: string;
  weight: number;
  tensors: ReadonlyMap<string, Float32Array>;
}

/**
 * FedAvg over whole tensors held in memory. `names` lists the tensors to average (every input must
 * have each of them with the same length). Returns the averaged tensors.
 */
export function fedAvg(inputs: readonly WeightedTensors[], names: readonly string[]): Map<string, Float32Array> {
  if (inputs.length === 0) throw new RangeError('FedAvg needs at least one input');
  const ordered = [...inputs].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const totalWeight = ordered.reduce((s, r) => s + r.weight, 0);
  if (!(totalWeight > 0) || ordered.some((r) => !(r.weight >= 0) || !Number.isFinite(r.weight))) {
    throw new RangeError('FedAvg weights must be finite, non-negative and sum to more than zero');
  }
  const out = new Map<string, Float32Array>();
  for (const name of names) {
    const first = ordered[0]!.tensors.get(name);
    if (!first) throw new RangeError(`input "${ordered[0]!.id}" lacks tensor "${name}"`);
    const acc = new Float64Array(first.length);
    for (const r of ordered) {
      const values = r.tensors.get(name);
      if (!values || values.length !== first.length) throw new RangeError(`input "${r.id}" has no tensor "${name}" of length ${first.length}`);
      accumulateWeighted(acc, values, r.weight);
    }
    const result = new Float32Array(first.length);
    finishAverage(acc, totalWeight, result);
    out.set(name, result);
  }
  return out;
}

/** Source of one client's tensor values, read block by block (from memory or a spool file). */
export interface TensorBlockReader {
  readonly id: string;
  readonly weight: number;
  /** Optimizer steps the client took this round (update meta `steps`); SCAFFOLD divides by it. Absent when not reported. */
  readonly steps?: number;
  /** Fill `out` with `out.length` values of tensor `name` starting at element `start`. */
  read(name: string, start: number, out: Float32Array): Promise<void>;
}

/** Receives averaged values block by block, tensors in the given order, blocks ascending. Must not keep `values` (it is reused). */
export type BlockSink = (name: string, start: number, values: Float32Array) => void | Promise<void>;

/**
 * Values per block: 64 Ki, whatever the number of clients. The float64 accumulator of a block
 * (512 KiB) stays in a core's L2 cache while group after group of clients is folded into it.
 */
const BLOCK_ELEMENTS = 1 << 16;

/**
 * Clients read and folded together: four (the widest fold kernel). The next group's blocks are
 * read while this group is folded, so reads overlap the arithmetic.
 */
const GROUP = 4;

// acc[i] += w0*a[i] + w1*b[i] + ...: folding up to four inputs per pass over the accumulator. The
// additions happen left to right, in the same order as one input at a time, so results are bit-identical.
function fold1(acc: Float64Array, n: number, a: Float32Array, wa: number): void {
  for (let i = 0; i < n; i++) acc[i] = acc[i]! + wa * a[i]!;
}
function fold2(acc: Float64Array, n: number, a: Float32Array, wa: number, b: Float32Array, wb: number): void {
  for (let i = 0; i < n; i++) acc[i] = acc[i]! + wa * a[i]! + wb * b[i]!;
}
function fold3(acc: Float64Array, n: number, a: Float32Array, wa: number, b: Float32Array, wb: number, c: Float32Array, wc: number): void {
  for (let i = 0; i < n; i++) acc[i] = acc[i]! + wa * a[i]! + wb * b[i]! + wc * c[i]!;
}
function fold4(
  acc: Float64Array,
  n: number,
  a: Float32Array,
  wa: number,
  b: Float32Array,
  wb: number,
  c: Float32Array,
  wc: number,
  d: Float32Array,
  wd: number,
): void {
  for (let i = 0; i < n; i++) acc[i] = acc[i]! + wa * a[i]! + wb * b[i]! + wc * c[i]! + wd * d[i]!;
}

/** acc[0..n) += sum_k weights[k] * inputs[k][0..n), k in order (up to four inputs). */
function foldGroup(acc: Float64Array, n: number, inputs: readonly Float32Array[], weights: readonly number[]): void {
  const [a, b, c, d] = inputs;
  const [wa, wb, wc, wd] = weights;
  if (inputs.length === 4) fold4(acc, n, a!, wa!, b!, wb!, c!, wc!, d!, wd!);
  else if (inputs.length === 3) fold3(acc, n, a!, wa!, b!, wb!, c!, wc!);
  else if (inputs.length === 2) fold2(acc, n, a!, wa!, b!, wb!);
  else fold1(acc, n, a!, wa!);
}

/**
 * FedAvg streamed in blocks, for models too large to hold one copy per client and federations too
 * large to read every client at once. Block by block, the clients are read four at a time (the
 * next four while these are folded into the block's float64 accumulator), in id order. Memory is
 * one accumulator block, one output block and two groups of four input blocks: 2.8 MiB whatever
 * the size of the model and the number of clients; each client is read in 256 KiB pieces. (It read
 * every client's block at once before: 16 MiB of buffers, and at 300 clients 16 KiB reads, 64 per
 * MB of update, with 300 reads in flight; docs/scaling.md.) The block size does not change the
 * result: each value is folded over the clients in the same order whatever the block.
 * Results go to `sink`, tensors in order, blocks ascending.
 */
export async function fedAvgStreamed(
  readers: readonly TensorBlockReader[],
  tensors: readonly { name: string; length: number }[],
  sink: BlockSink,
  blockElements = BLOCK_ELEMENTS,
): Promise<void> {
  if (readers.length === 0) throw new RangeError('FedAvg needs at least one input');
  const ordered = [...readers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const totalWeight = ordered.reduce((s, r) => s + r.weight, 0);
  if (!(totalWeight > 0) || ordered.some((r) => !(r.weight >= 0) || !Number.isFinite(r.weight))) {
    throw new RangeError('FedAvg weights must be finite, non-negative and sum to more than zero');
  }
  const blocks: { name: string; start: number; n: number }[] = [];
  for (const { name, length } of tensors)
    for (let start = 0; start < length; start += blockElements) blocks.push({ name, start, n: Math.min(blockElements, length - start) });
  const maxN = blocks.reduce((m, b) => Math.max(m, b.n), 0);
  // Groups of four, then two, then one (the kernels' widths): the same groups for every block.
  const groups: { k: number; size: number; weights: number[] }[] = [];
  for (let k = 0; k < ordered.length;) {
    const size = ordered.length - k >= GROUP ? GROUP : ordered.length - k >= 2 ? 2 : 1;
    groups.push({ k, size, weights: ordered.slice(k, k + size).map((r) => r.weight) });
    k += size;
  }
  const folder = createFolder(maxN);
  const steps = blocks.length * groups.length;
  // Step s reads group (s mod groups) of block (s div groups) into input set s & 1.
  const fetch = (s: number): Promise<void> => {
    const { name, start, n } = blocks[Math.floor(s / groups.length)]!;
    const { k, size } = groups[s % groups.length]!;
    const set = folder.inputs[s & 1]!;
    const reads: Promise<void>[] = [];
    for (let j = 0; j < size; j++) reads.push(ordered[k + j]!.read(name, start, set[j]!.subarray(0, n)));
    return Promise.all(reads).then(() => undefined);
  };
  let pending = steps ? fetch(0) : null;
  for (let s = 0; s < steps; s++) {
    await pending!;
    if (s + 1 < steps) {
      pending = fetch(s + 1);
      pending.catch(() => undefined); // awaited next step; do not report it unhandled meanwhile
    }
    const { name, start, n } = blocks[Math.floor(s / groups.length)]!;
    const g = s % groups.length;
    const { size, weights } = groups[g]!;
    const last = g === groups.length - 1;
    folder.fold(s & 1, size, n, weights, g === 0, last, totalWeight);
    if (last) await sink(name, start, folder.out.subarray(0, n));
  }
}

interface Folder {
  /** Two sets (this group, the next) of GROUP input buffers. */
  inputs: Float32Array[][];
  /** The block's averages once its last group is folded (a view, reused). */
  out: Float32Array;
  /**
   * Fold the first n values of set `set`'s first `size` inputs into the accumulator: `first`
   * starts it from 0, `last` finishes the average into `out`.
   */
  fold(set: number, size: number, n: number, weights: readonly number[], first: boolean, last: boolean, totalWeight: number): void;
}

/** The WebAssembly SIMD kernels when available (shared/fl/fedavg-simd.ts), else plain JavaScript; bit-identical. */
function createFolder(maxN: number): Folder {
  const n4 = Math.ceil(maxN / 4) * 4;
  const kernels = simdKernels(n4 * 8 + n4 * 4 + 2 * GROUP * n4 * 4);
  if (!kernels) {
    const inputs = [0, 1].map(() => Array.from({ length: GROUP }, () => new Float32Array(maxN)));
    const acc = new Float64Array(maxN);
    const out = new Float32Array(maxN);
    return {
      inputs,
      out,
      fold(set, size, n, weights, first, last, totalWeight) {
        if (first) acc.fill(0, 0, n);
        foldGroup(acc, n, inputs[set]!.slice(0, size), weights);
        if (last) finishAverage(acc.subarray(0, n), totalWeight, out.subarray(0, n));
      },
    };
  }
  // Everything the kernels touch lives in the module's memory: readers fill the inputs in place.
  const buffer = kernels.memory.buffer;
  const accAt = 0;
  const outAt = n4 * 8;
  const inputAt = (set: number, j: number) => outAt + n4 * 4 + (set * GROUP + j) * n4 * 4;
  const out = new Float32Array(buffer, outAt, n4);
  const inputs = [0, 1].map((set) => Array.from({ length: GROUP }, (_, j) => new Float32Array(buffer, inputAt(set, j), n4)));
  // The last n % 4 values of a block go through the scalar loop (the kernels take multiples of 4),
  // summed here across the groups: 0 + w*x first, then left to right, as the kernels do.
  const tail = new Float64Array(4);
  return {
    inputs,
    out,
    fold(set, size, n, weights, first, last, totalWeight) {
      const inv = 1 / totalWeight;
      const vec = n & ~3;
      const mode = ((first ? 'i' : '') + (last ? 'f' : '')) as FoldMode;
      const ptrs = Array.from({ length: size }, (_, j) => inputAt(set, j));
      if (vec > 0) kernels.fold[size]![mode](accAt, outAt, vec, inv, ...ptrs, ...weights);
      const x = inputs[set]!;
      for (let i = vec; i < n; i++) {
        let a = first ? 0 : tail[i - vec]!;
        for (let j = 0; j < size; j++) a = a + weights[j]! * x[j]![i]!;
        if (last) out[i] = a * inv;
        else tail[i - vec] = a;
      }
    },
  };
}

/** True when every value is a finite number (no NaN, no ±Infinity). */
export function allFinite(values: Float32Array): boolean {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    // v - v is NaN for NaN and ±Infinity, 0 otherwise; one comparison per value.
    if (v - v !== 0) return false;
  }
  return true;
}

/**
 * L2 norm of each client's change to the base model, ||w_k - w_base||, and of the base itself,
 * over the given tensors, streamed block by block like fedAvgStreamed. Used to screen out
 * poisoned updates.
 */
export async function deltaNorms(
  readers: readonly TensorBlockReader[],
  base: TensorBlockReader,
  tensors: readonly { name: string; length: number }[],
  blockElements = 1 << 20,
): Promise<{ norms: Map<string, number>; baseNorm: number }> {
  const sums = new Map(readers.map((r) => [r.id, 0]));
  let baseSum = 0;
  // Blocks no larger than the largest tensor: a 1 MB model needs 2 x 1 MiB here, not 2 x 4 MiB.
  const largest = tensors.reduce((m, t) => Math.max(m, t.length), 0);
  const blockN = Math.max(1, Math.min(blockElements, largest));
  const baseBlock = new Float32Array(blockN);
  const block = new Float32Array(blockN);
  for (const { name, length } of tensors) {
    for (let start = 0; start < length; start += blockN) {
      const n = Math.min(blockN, length - start);
      const baseView = baseBlock.subarray(0, n);
      await base.read(name, start, baseView);
      for (let i = 0; i < n; i++) baseSum += baseView[i]! * baseView[i]!;
      const view = block.subarray(0, n);
      for (const r of readers) {
        await r.read(name, start, view);
        let s = 0;
        for (let i = 0; i < n; i++) {
          const d = view[i]! - baseView[i]!;
          s += d * d;
        }
        sums.set(r.id, sums.get(r.id)! + s);
      }
    }
  }
  return { norms: new Map([...sums.entries()].map(([id, s]) => [id, Math.sqrt(s)])), baseNorm: Math.sqrt(baseSum) };
}
