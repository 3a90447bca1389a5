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

/**
 * FedAvg streamed in blocks, for models too large to hold one copy per client: memory is one
 * float64 block plus one float32 block, whatever the number of clients. Writes into `target`.
 */
export async function fedAvgStreamed(
  readers: readonly TensorBlockReader[],
  tensors: readonly { name: string; length: number }[],
  target: (name: string) => Float32Array,
  blockElements = 1 << 20,
): Promise<void> {
  if (readers.length === 0) throw new RangeError('FedAvg needs at least one input');
  const ordered = [...readers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const totalWeight = ordered.reduce((s, r) => s + r.weight, 0);
  if (!(totalWeight > 0) || ordered.some((r) => !(r.weight >= 0) || !Number.isFinite(r.weight))) {
    throw new RangeError('FedAvg weights must be finite, non-negative and sum to more than zero');
  }
  const acc = new Float64Array(blockElements);
  const block = new Float32Array(blockElements);
  for (const { name, length } of tensors) {
    const out = target(name);
    if (out.length !== length) throw new RangeError(`target for "${name}" has ${out.length} values, expected ${length}`);
    for (let start = 0; start < length; start += blockElements) {
      const n = Math.min(blockElements, length - start);
      const accView = acc.subarray(0, n);
      const blockView = block.subarray(0, n);
      accView.fill(0);
      for (const r of ordered) {
        await r.read(name, start, blockView);
        accumulateWeighted(accView, blockView, r.weight);
      }
      finishAverage(accView, totalWeight, out.subarray(start, start + n));
    }
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
  const baseBlock = new Float32Array(blockElements);
  const block = new Float32Array(blockElements);
  for (const { name, length } of tensors) {
    for (let start = 0; start < length; start += blockElements) {
      const n = Math.min(blockElements, length - start);
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
