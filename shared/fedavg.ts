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
export function accumulateWeighted(acc: Float64Array, values: Float32Array, weight: number): void {
  const n = values.length;
  if (acc.length < n) throw new RangeError(`accumulator of ${acc.length} is shorter than ${n} values`);
  // Plain indexed loop: V8 compiles it to tight scalar code; no allocation per element.
  for (let i = 0; i < n; i++) acc[i] += weight * values[i]!;
}

/** out[i] = acc[i] / totalWeight, rounded to float32. */
export function finishAverage(acc: Float64Array, totalWeight: number, out: Float32Array): void {
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
  /** Fill `out` with `out.length` values of tensor `name` starting at element `start`. */
  read(name: string, start: number, out: Float32Array): Promise<void>;
}

/** Receives averaged values block by block, tensors in the given order, blocks ascending. Must not keep `values` (it is reused). */
export type BlockSink = (name: string, start: number, values: Float32Array) => void | Promise<void>;

/**
 * Default block: 32 Ki values. The float64 accumulator (256 KiB) and the blocks being folded in stay
 * in the CPU's L2 cache, so memory traffic is close to reading each input once.
 */
export const DEFAULT_BLOCK_ELEMENTS = 1 << 15;

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
function fold4(acc: Float64Array, n: number, a: Float32Array, wa: number, b: Float32Array, wb: number, c: Float32Array, wc: number, d: Float32Array, wd: number): void {
  for (let i = 0; i < n; i++) acc[i] = acc[i]! + wa * a[i]! + wb * b[i]! + wc * c[i]! + wd * d[i]!;
}

/** acc[0..n) = sum_k weights[k] * inputs[k][0..n), folded in the order given. */
export function foldBlock(acc: Float64Array, n: number, inputs: readonly Float32Array[], weights: readonly number[]): void {
  acc.fill(0, 0, n);
  let k = 0;
  for (; k + 4 <= inputs.length; k += 4) fold4(acc, n, inputs[k]!, weights[k]!, inputs[k + 1]!, weights[k + 1]!, inputs[k + 2]!, weights[k + 2]!, inputs[k + 3]!, weights[k + 3]!);
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
  blockElements = DEFAULT_BLOCK_ELEMENTS,
): Promise<void> {
  if (readers.length === 0) throw new RangeError('FedAvg needs at least one input');
  const ordered = [...readers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const totalWeight = ordered.reduce((s, r) => s + r.weight, 0);
  if (!(totalWeight > 0) || ordered.some((r) => !(r.weight >= 0) || !Number.isFinite(r.weight))) {
    throw new RangeError('FedAvg weights must be finite, non-negative and sum to more than zero');
  }
  const weights = ordered.map((r) => r.weight);
  const blocks: { name: string; start: number; n: number }[] = [];
  for (const { name, length } of tensors) for (let start = 0; start < length; start += blockElements) blocks.push({ name, start, n: Math.min(blockElements, length - start) });
  const maxN = blocks.reduce((m, b) => Math.max(m, b.n), 0);
  const sets = [0, 1].map(() => ordered.map(() => new Float32Array(maxN)));
  const acc = new Float64Array(maxN);
  const out = new Float32Array(maxN);
  const fetch = (i: number): Promise<Float32Array[]> => {
    const { name, start, n } = blocks[i]!;
    const views = sets[i & 1]!.map((b) => b.subarray(0, n));
    return Promise.all(ordered.map((r, k) => r.read(name, start, views[k]!))).then(() => views);
  };
  let pending = blocks.length ? fetch(0) : null;
  for (let i = 0; i < blocks.length; i++) {
    const views = await pending!;
    if (i + 1 < blocks.length) {
      pending = fetch(i + 1);
      pending.catch(() => undefined); // awaited next iteration; do not report it unhandled meanwhile
    }
    const { name, start, n } = blocks[i]!;
    foldBlock(acc, n, views, weights);
    const result = out.subarray(0, n);
    finishAverage(acc, totalWeight, result);
    await sink(name, start, result);
  }
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
