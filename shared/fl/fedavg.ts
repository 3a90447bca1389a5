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

/** Read buffers of fedAvgStreamed, all clients together (two blocks each): 16 MiB. */
const READ_BUFFER_BYTES = 16 * 1024 * 1024;

/**
 * Values read per client per block: 256 Ki (1 MiB of float32), fewer with many clients so that the
 * read buffers stay within READ_BUFFER_BYTES, down to 1 Ki (4 KiB reads; up to 2,048 clients stay
 * within it). Large reads keep the per-read cost (a system call on a thread of the pool) small
 * next to the copy itself; the bound keeps the aggregator's memory from growing with the clients
 * (it was 64 MiB, not below 16 Ki values: 37.5 MiB more at 300 clients than at 10, measured with
 * bench:scale, docs/scaling.md). The block size does not change the result: each value is folded
 * over the clients in the same order whatever the block.
 */
function defaultBlockElements(clients: number): number {
  let n = 1 << 18;
  while (n > 1 << 10 && 2 * clients * n * 4 > READ_BUFFER_BYTES) n >>= 1;
  return n;
}

/**
 * Values folded at once inside a block: 16 Ki. The float64 accumulator (128 KiB) and the input
 * slices being folded stay in the CPU's L2 cache, so memory traffic is close to reading each
 * input once.
 */
const FOLD_ELEMENTS = 1 << 14;

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

/** acc[0..n) = sum_k weights[k] * inputs[k][0..n), folded in the order given. */
function foldBlock(acc: Float64Array, n: number, inputs: readonly Float32Array[], weights: readonly number[]): void {
  acc.fill(0, 0, n);
  let k = 0;
  for (; k + 4 <= inputs.length; k += 4)
    fold4(acc, n, inputs[k]!, weights[k]!, inputs[k + 1]!, weights[k + 1]!, inputs[k + 2]!, weights[k + 2]!, inputs[k + 3]!, weights[k + 3]!);
  const left = inputs.length - k;
  if (left === 3) fold3(acc, n, inputs[k]!, weights[k]!, inputs[k + 1]!, weights[k + 1]!, inputs[k + 2]!, weights[k + 2]!);
  else if (left === 2) fold2(acc, n, inputs[k]!, weights[k]!, inputs[k + 1]!, weights[k + 1]!);
  else if (left === 1) fold1(acc, n, inputs[k]!, weights[k]!);
}

/**
 * FedAvg streamed in blocks, for models too large to hold one copy per client: memory is two sets
 * of one block per client (the next block is read while this one is folded, so disk or page-cache
 * reads overlap the arithmetic), one float64 accumulator block and one output block, whatever the
 * size of the model. Results go to `sink`, tensors in order, blocks ascending.
 */
export async function fedAvgStreamed(
  readers: readonly TensorBlockReader[],
  tensors: readonly { name: string; length: number }[],
  sink: BlockSink,
  blockElements = defaultBlockElements(readers.length),
): Promise<void> {
  if (readers.length === 0) throw new RangeError('FedAvg needs at least one input');
  const ordered = [...readers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const totalWeight = ordered.reduce((s, r) => s + r.weight, 0);
  if (!(totalWeight > 0) || ordered.some((r) => !(r.weight >= 0) || !Number.isFinite(r.weight))) {
    throw new RangeError('FedAvg weights must be finite, non-negative and sum to more than zero');
  }
  const weights = ordered.map((r) => r.weight);
  const blocks: { name: string; start: number; n: number }[] = [];
  for (const { name, length } of tensors)
    for (let start = 0; start < length; start += blockElements) blocks.push({ name, start, n: Math.min(blockElements, length - start) });
  const maxN = blocks.reduce((m, b) => Math.max(m, b.n), 0);
  const folder = createFolder(maxN, ordered.length);
  const fetch = (i: number): Promise<void> => {
    const { name, start, n } = blocks[i]!;
    const set = folder.inputs[i & 1]!;
    return Promise.all(ordered.map((r, k) => r.read(name, start, set[k]!.subarray(0, n)))).then(() => undefined);
  };
  let pending = blocks.length ? fetch(0) : null;
  for (let i = 0; i < blocks.length; i++) {
    await pending!;
    if (i + 1 < blocks.length) {
      pending = fetch(i + 1);
      pending.catch(() => undefined); // awaited next iteration; do not report it unhandled meanwhile
    }
    const { name, start, n } = blocks[i]!;
    await sink(name, start, folder.average(n, i & 1, weights, totalWeight));
  }
}

interface Folder {
  /** Two sets (current block, next block) of one input buffer per client. */
  inputs: Float32Array[][];
  /** Fold set `set`'s first n values of every input and return the averages (a view, reused). */
  average(n: number, set: number, weights: readonly number[], totalWeight: number): Float32Array;
}

/** The WebAssembly SIMD kernels when available (shared/fl/fedavg-simd.ts), else plain JavaScript; bit-identical. */
function createFolder(maxN: number, clients: number): Folder {
  const n4 = Math.ceil(maxN / 4) * 4;
  const f = Math.min(FOLD_ELEMENTS, n4);
  const kernels = simdKernels(f * 8 + n4 * 4 + 2 * clients * n4 * 4);
  if (!kernels) {
    const inputs = [0, 1].map(() => Array.from({ length: clients }, () => new Float32Array(maxN)));
    const acc = new Float64Array(f);
    const out = new Float32Array(maxN);
    return {
      inputs,
      average(n, set, weights, totalWeight) {
        for (let s0 = 0; s0 < n; s0 += f) {
          const m = Math.min(f, n - s0);
          foldBlock(
            acc,
            m,
            inputs[set]!.map((x) => x.subarray(s0, s0 + m)),
            weights,
          );
          finishAverage(acc, totalWeight, out.subarray(s0, s0 + m));
        }
        return out.subarray(0, n);
      },
    };
  }
  // Everything the kernels touch lives in the module's memory: readers fill the inputs in place.
  const buffer = kernels.memory.buffer;
  const accAt = 0;
  const outAt = f * 8;
  const inputAt = (set: number, k: number) => outAt + n4 * 4 + (set * clients + k) * n4 * 4;
  const out = new Float32Array(buffer, outAt, n4);
  // Clients folded in groups of 4, then 2, then 1: the first group starts the sums, the last one
  // finishes the average, so the accumulator is touched only between groups.
  const groups: { k: number; size: 1 | 2 | 4 }[] = [];
  for (let k = 0; k < clients;) {
    const size = clients - k >= 4 ? 4 : clients - k >= 2 ? 2 : 1;
    groups.push({ k, size });
    k += size;
  }
  const inputs = [0, 1].map((set) => Array.from({ length: clients }, (_, k) => new Float32Array(buffer, inputAt(set, k), n4)));
  return {
    inputs,
    average(n, set, weights, totalWeight) {
      const x = inputs[set]!;
      const inv = 1 / totalWeight;
      for (let s0 = 0; s0 < n; s0 += f) {
        const m = Math.min(f, n - s0);
        const vec = m & ~3; // the kernels take multiples of 4; the last few values go through the scalar loop
        for (let g = 0; g < groups.length; g++) {
          const { k, size } = groups[g]!;
          const mode = ((g === 0 ? 'i' : '') + (g === groups.length - 1 ? 'f' : '')) as FoldMode;
          const ptrs = Array.from({ length: size }, (_, j) => inputAt(set, k + j) + s0 * 4);
          kernels.fold[size]![mode](accAt, outAt + s0 * 4, vec, inv, ...ptrs, ...weights.slice(k, k + size));
        }
        for (let i = vec; i < m; i++) {
          let a = 0;
          for (let j = 0; j < clients; j++) a = a + weights[j]! * x[j]![s0 + i]!;
          out[s0 + i] = a * inv;
        }
      }
      return out.subarray(0, n);
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
