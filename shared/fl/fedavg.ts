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
  /**
   * Fill `out` with `out.length` values of tensor `name` starting at element `start`. Callers
   * (fedAvgStreamed, deltaNorms) never have two reads of one reader in flight.
   */
  read(name: string, start: number, out: Float32Array): Promise<void>;
}

/** Receives averaged values block by block, tensors in the given order, blocks ascending. Must not keep `values` (it is reused). */
export type BlockSink = (name: string, start: number, values: Float32Array) => void | Promise<void>;

/**
 * Bytes of one step's input blocks: 2 MiB, whatever the number of clients. A block holds 2 MiB /
 * (4 x clients per step) values: 64 Ki with eight clients a step, about 100 Ki with five, so each
 * read is 256-410 KiB (the per-read cost, a promise and a trip through libuv's pool, stays small
 * next to the copy).
 */
const STEP_BYTES = 2 * 1024 * 1024;

/**
 * Clients read at once, at most: eight. A block's clients are split into as few steps of at most
 * eight as there are (ten clients: two of five); the next step is read while this one is folded,
 * so reads overlap the arithmetic, and up to eight reads keep libuv's four threads busy.
 */
const STEP_CLIENTS = 8;

/**
 * Input sets: three, so two steps are being read while a third is folded (with one, libuv's
 * threads waited for every fold and every turn of the event loop: 25-40 % slower for ten
 * VGG-19-sized updates, bench:aggregate).
 */
const SETS = 3;

/**
 * Values folded at once inside a step: 16 Ki. The float64 accumulator of that slice (128 KiB)
 * stays in a core's L2 cache while the step's clients are folded into it four at a time.
 */
const FOLD_ELEMENTS = 1 << 14;

// acc[i] += w0*a[i] + w1*b[i] + ...: folding up to four inputs per pass over the accumulator. The
// additions happen left to right, in the same order as one input at a time, so results are
// bit-identical however the clients are grouped.
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

/** acc[0..n) += sum_k weights[k] * inputs[k][0..n), in the order given, four inputs per pass. */
function foldInputs(acc: Float64Array, n: number, inputs: readonly Float32Array[], weights: readonly number[]): void {
  let k = 0;
  for (; k + 4 <= inputs.length; k += 4)
    fold4(acc, n, inputs[k]!, weights[k]!, inputs[k + 1]!, weights[k + 1]!, inputs[k + 2]!, weights[k + 2]!, inputs[k + 3]!, weights[k + 3]!);
  const left = inputs.length - k;
  if (left === 3) fold3(acc, n, inputs[k]!, weights[k]!, inputs[k + 1]!, weights[k + 1]!, inputs[k + 2]!, weights[k + 2]!);
  else if (left === 2) fold2(acc, n, inputs[k]!, weights[k]!, inputs[k + 1]!, weights[k + 1]!);
  else if (left === 1) fold1(acc, n, inputs[k]!, weights[k]!);
}

/**
 * FedAvg streamed in blocks, for models too large to hold one copy per client and federations too
 * large to read every client at once. Block by block, the clients are read in steps of at most
 * eight, in id order (the next two steps while this one is folded into the block's float64
 * accumulator). Memory: three steps of input blocks (6 MiB), one accumulator block and one output
 * block, under 8 MiB whatever the size of the model and the number of clients; each client is read
 * in pieces of 256-410 KiB. (It read every client's block at once before: 16 MiB of buffers, and at 300
 * clients 16 KiB reads, 64 per MB of update, 300 reads in flight; docs/scaling.md.) The block size
 * and the steps do not change the result: each value is folded over the clients in the same order.
 * Results go to `sink`, tensors in order, blocks ascending.
 */
export async function fedAvgStreamed(
  readers: readonly TensorBlockReader[],
  tensors: readonly { name: string; length: number }[],
  sink: BlockSink,
  blockElements?: number,
): Promise<void> {
  if (readers.length === 0) throw new RangeError('FedAvg needs at least one input');
  const ordered = [...readers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const totalWeight = ordered.reduce((s, r) => s + r.weight, 0);
  if (!(totalWeight > 0) || ordered.some((r) => !(r.weight >= 0) || !Number.isFinite(r.weight))) {
    throw new RangeError('FedAvg weights must be finite, non-negative and sum to more than zero');
  }
  // The same steps for every block: as few as STEP_CLIENTS allows, their sizes as even as can be.
  const stepCount = Math.ceil(ordered.length / STEP_CLIENTS);
  const groups: { k: number; size: number; weights: number[] }[] = [];
  for (let g = 0, k = 0; g < stepCount; g++) {
    const size = Math.floor(ordered.length / stepCount) + (g < ordered.length % stepCount ? 1 : 0);
    groups.push({ k, size, weights: ordered.slice(k, k + size).map((r) => r.weight) });
    k += size;
  }
  const perBlock = blockElements ?? Math.floor(STEP_BYTES / (4 * 4 * groups[0]!.size)) * 4;
  const blocks: { name: string; start: number; n: number }[] = [];
  for (const { name, length } of tensors)
    for (let start = 0; start < length; start += perBlock) blocks.push({ name, start, n: Math.min(perBlock, length - start) });
  const maxN = blocks.reduce((m, b) => Math.max(m, b.n), 0);
  const folder = createFolder(maxN, groups[0]!.size);
  const steps = blocks.length * groups.length;
  // Step s reads group (s mod groups) of block (s div groups) into input set s mod SETS, as soon
  // as the same group's previous step is in: libuv's threads go on without waiting for a fold,
  // and a reader never has two reads in flight (spool readers decode f16, q8 and differences
  // through scratch buffers of their own). Steps of different groups are read at the same time.
  const previous: Promise<void>[] = groups.map(() => Promise.resolve());
  const readStep = (s: number): Promise<void> => {
    const { name, start, n } = blocks[Math.floor(s / groups.length)]!;
    const { k, size } = groups[s % groups.length]!;
    const set = folder.inputs[s % SETS]!;
    const reads: Promise<void>[] = [];
    for (let j = 0; j < size; j++) reads.push(ordered[k + j]!.read(name, start, set[j]!.subarray(0, n)));
    return Promise.all(reads).then(() => undefined);
  };
  const fetch = (s: number): Promise<void> => {
    const g = s % groups.length;
    const done = previous[g]!.then(() => readStep(s));
    done.catch(() => undefined); // awaited in its turn; do not report it unhandled meanwhile
    previous[g] = done;
    return done;
  };
  const pending: Promise<void>[] = [];
  for (let s = 0; s < Math.min(steps, SETS - 1); s++) pending.push(fetch(s));
  for (let s = 0; s < steps; s++) {
    await pending.shift()!;
    if (s + SETS - 1 < steps) pending.push(fetch(s + SETS - 1));
    const { name, start, n } = blocks[Math.floor(s / groups.length)]!;
    const g = s % groups.length;
    const { size, weights } = groups[g]!;
    const last = g === groups.length - 1;
    folder.fold(s % SETS, size, n, weights, g === 0, last, totalWeight);
    if (last) await sink(name, start, folder.out.subarray(0, n));
  }
}

interface Folder {
  /** SETS sets (this step, the next ones) of input buffers, one per client of a step. */
  inputs: Float32Array[][];
  /** The block's averages once its last step is folded (a view, reused). */
  out: Float32Array;
  /**
   * Fold the first n values of set `set`'s first `size` inputs into the accumulator: `first`
   * starts it from 0, `last` finishes the average into `out`.
   */
  fold(set: number, size: number, n: number, weights: readonly number[], first: boolean, last: boolean, totalWeight: number): void;
}

/** The WebAssembly SIMD kernels when available (shared/fl/fedavg-simd.ts), else plain JavaScript; bit-identical. */
function createFolder(maxN: number, stepClients: number): Folder {
  const n4 = Math.ceil(maxN / 4) * 4;
  const kernels = simdKernels(n4 * 8 + n4 * 4 + SETS * stepClients * n4 * 4);
  if (!kernels) {
    const inputs = Array.from({ length: SETS }, () => Array.from({ length: stepClients }, () => new Float32Array(maxN)));
    const acc = new Float64Array(maxN);
    const out = new Float32Array(maxN);
    return {
      inputs,
      out,
      fold(set, size, n, weights, first, last, totalWeight) {
        for (let s0 = 0; s0 < n; s0 += FOLD_ELEMENTS) {
          const m = Math.min(FOLD_ELEMENTS, n - s0);
          const slice = acc.subarray(s0, s0 + m);
          if (first) slice.fill(0);
          foldInputs(
            slice,
            m,
            inputs[set]!.slice(0, size).map((x) => x.subarray(s0, s0 + m)),
            weights,
          );
          if (last) finishAverage(slice, totalWeight, out.subarray(s0, s0 + m));
        }
      },
    };
  }
  // Everything the kernels touch lives in the module's memory: readers fill the inputs in place.
  const buffer = kernels.memory.buffer;
  const accAt = 0;
  const outAt = n4 * 8;
  const inputAt = (set: number, j: number) => outAt + n4 * 4 + (set * stepClients + j) * n4 * 4;
  const out = new Float32Array(buffer, outAt, n4);
  const inputs = Array.from({ length: SETS }, (_, set) => Array.from({ length: stepClients }, (_, j) => new Float32Array(buffer, inputAt(set, j), n4)));
  // The last n % 4 values of a block go through the scalar loop (the kernels take multiples of 4),
  // summed here across the steps: 0 + w*x first, then left to right, as the kernels do.
  const tail = new Float64Array(4);
  return {
    inputs,
    out,
    fold(set, size, n, weights, first, last, totalWeight) {
      const inv = 1 / totalWeight;
      const vec = n & ~3;
      // Slice by slice, the step's clients four (then two, then one) at a time: the slice's
      // accumulator stays in cache between the kernel calls.
      for (let s0 = 0; s0 < vec; s0 += FOLD_ELEMENTS) {
        const m = Math.min(FOLD_ELEMENTS, vec - s0);
        for (let k = 0; k < size;) {
          const width = size - k >= 4 ? 4 : size - k >= 2 ? 2 : 1;
          const mode = ((first && k === 0 ? 'i' : '') + (last && k + width === size ? 'f' : '')) as FoldMode;
          const ptrs = Array.from({ length: width }, (_, j) => inputAt(set, k + j) + s0 * 4);
          kernels.fold[width]![mode](accAt + s0 * 8, outAt + s0 * 4, m, inv, ...ptrs, ...weights.slice(k, k + width));
          k += width;
        }
      }
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
