import { deltaNorms, fedAvgStreamed, type BlockSink, type TensorBlockReader } from './fedavg.js';

/**
 * Byzantine-robust aggregation rules, streamed over block readers like fedAvgStreamed: memory is
 * two sets of one block per client plus one output block, whatever the model's size. Pure math on
 * typed arrays (no MQTT, no tfjs, no files).
 *
 *  - coordinate-wise trimmed mean and median (Yin et al. 2018, "Byzantine-Robust Distributed
 *    Learning: Towards Optimal Statistical Rates"): each weight is the mean of the clients' values
 *    without the `trim` largest and `trim` smallest, or their median. Sample counts are ignored:
 *    a site that claims many samples gets no more say than any other.
 *  - norm-clipped FedAvg (Sun et al. 2019, "Can You Really Backdoor Federated Learning?"): each
 *    client's change w_k - w_base is scaled down to at most a bound (the median change of the
 *    round) before the sample-weighted average.
 *
 * Inputs must be finite (the aggregator refuses NaN and Infinity at arrival, FL_UPDATE_NONFINITE);
 * sums run in float64, so finite inputs give finite outputs.
 */

export interface StreamTensor {
  name: string;
  length: number;
}

/** Combines the first `n` values of each client's block into `out[0..n)`. */
type Combine = (inputs: readonly Float32Array[], n: number, out: Float32Array) => void;

function blockElementsFor(clients: number): number {
  let n = 1 << 16;
  while (n > 1 << 12 && 2 * clients * n * 4 > 64 * 1024 * 1024) n >>= 1;
  return n;
}

/**
 * Reads every client's values block by block (the next block is read while this one is combined,
 * as fedAvgStreamed does) and hands each combined block to `sink`: tensors in order, blocks ascending.
 */
async function streamCombined(
  readers: readonly TensorBlockReader[],
  tensors: readonly StreamTensor[],
  sink: BlockSink,
  combine: Combine,
  blockElements: number,
): Promise<void> {
  const ordered = [...readers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const blocks: { name: string; start: number; n: number }[] = [];
  for (const { name, length } of tensors)
    for (let start = 0; start < length; start += blockElements) blocks.push({ name, start, n: Math.min(blockElements, length - start) });
  const maxN = blocks.reduce((m, b) => Math.max(m, b.n), 0);
  const sets = [0, 1].map(() => ordered.map(() => new Float32Array(maxN)));
  const out = new Float32Array(maxN);
  const fetch = (i: number): Promise<void> => {
    const { name, start, n } = blocks[i]!;
    const set = sets[i & 1]!;
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
    combine(sets[i & 1]!, n, out);
    await sink(name, start, out.subarray(0, n));
  }
}

/** Sorts v[0..n) ascending in place (insertion sort: n is the number of clients, small). */
function sortSmall(v: Float64Array, n: number): void {
  for (let i = 1; i < n; i++) {
    const x = v[i]!;
    let j = i - 1;
    while (j >= 0 && v[j]! > x) {
      v[j + 1] = v[j]!;
      j--;
    }
    v[j + 1] = x;
  }
}

/**
 * Values trimmed from each end for `clients` values and a trim fraction: ceil(fraction x clients),
 * so that one attacker among a few sites is trimmed as soon as the fraction is above zero, but
 * never so many that nothing is left (at most (clients - 1) / 2 from each end).
 */
export function trimCount(clients: number, fraction: number): number {
  if (!(fraction >= 0 && fraction < 0.5)) throw new RangeError(`trim fraction ${fraction} is not in [0, 0.5)`);
  return Math.max(0, Math.min(Math.ceil(fraction * clients - 1e-9), Math.floor((clients - 1) / 2)));
}

/** Mean of the sorted values v[trim .. n - trim). */
function trimmedMeanOf(sorted: Float64Array, n: number, trim: number): number {
  let s = 0;
  for (let i = trim; i < n - trim; i++) s += sorted[i]!;
  return s / (n - 2 * trim);
}

/** Median of the sorted values v[0..n): the middle one, or the mean of the two middle ones. */
function medianOf(sorted: Float64Array, n: number): number {
  const m = n >> 1;
  return n % 2 ? sorted[m]! : (sorted[m - 1]! + sorted[m]!) / 2;
}

function coordinateWise(clients: number, pick: (sorted: Float64Array, n: number) => number): Combine {
  const scratch = new Float64Array(clients);
  return (inputs, n, out) => {
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < clients; k++) scratch[k] = inputs[k]![i]!;
      sortSmall(scratch, clients);
      out[i] = pick(scratch, clients);
    }
  };
}

/**
 * Coordinate-wise trimmed mean: for each weight, drop the trimCount(n, trimFraction) largest and
 * smallest of the n clients' values and average the rest (unweighted).
 */
export async function trimmedMeanStreamed(
  readers: readonly TensorBlockReader[],
  tensors: readonly StreamTensor[],
  sink: BlockSink,
  trimFraction: number,
  blockElements = blockElementsFor(readers.length),
): Promise<{ trimmed: number }> {
  if (readers.length === 0) throw new RangeError('the trimmed mean needs at least one input');
  const trim = trimCount(readers.length, trimFraction);
  await streamCombined(
    readers,
    tensors,
    sink,
    coordinateWise(readers.length, (v, n) => trimmedMeanOf(v, n, trim)),
    blockElements,
  );
  return { trimmed: trim };
}

/** Coordinate-wise median of the clients' values (unweighted; the mean of the two middle values for an even count). */
export async function medianStreamed(
  readers: readonly TensorBlockReader[],
  tensors: readonly StreamTensor[],
  sink: BlockSink,
  blockElements = blockElementsFor(readers.length),
): Promise<void> {
  if (readers.length === 0) throw new RangeError('the median needs at least one input');
  await streamCombined(readers, tensors, sink, coordinateWise(readers.length, medianOf), blockElements);
}

/** Each client's scale min(1, bound / ||w_k - w_base||) and the bound: the median change, the lower one of the two middle ones for an even count. */
export function clipScales(norms: ReadonlyMap<string, number>, bound?: number): { bound: number; scales: Map<string, number> } {
  const sorted = [...norms.values()].sort((a, b) => a - b);
  const b = bound ?? (sorted.length ? sorted[(sorted.length - 1) >> 1]! : 0);
  const scales = new Map([...norms.entries()].map(([id, norm]) => [id, norm > b ? (b > 0 ? b / norm : 0) : 1]));
  return { bound: b, scales };
}

/**
 * Norm-clipped FedAvg: w = w_base + sum_k p_k s_k (w_k - w_base), p_k = n_k / n, s_k = min(1, bound / ||w_k - w_base||),
 * bound = the median change of the round unless given. Two streamed passes: the change norms
 * (deltaNorms), then one fedAvgStreamed over the clients with weights n_k s_k and the base with
 * weight n (1 - sum_k p_k s_k), which is the same sum written as an average (all weights >= 0).
 */
export async function clippedFedAvgStreamed(
  readers: readonly TensorBlockReader[],
  base: TensorBlockReader,
  tensors: readonly StreamTensor[],
  sink: BlockSink,
  bound?: number,
): Promise<{ bound: number; scales: Map<string, number>; norms: Map<string, number> }> {
  if (readers.length === 0) throw new RangeError('FedAvg needs at least one input');
  const { norms } = await deltaNorms(readers, base, tensors);
  const clip = clipScales(norms, bound);
  const total = readers.reduce((s, r) => s + r.weight, 0);
  const scaled: TensorBlockReader[] = readers.map((r) => ({ id: r.id, weight: r.weight * clip.scales.get(r.id)!, read: (n, s, o) => r.read(n, s, o) }));
  const kept = scaled.reduce((s, r) => s + r.weight, 0);
  // The base goes last in the sorted order (its id sorts after any agent id), read like a client.
  const baseWeight = Math.max(0, total - kept);
  const inputs =
    baseWeight > 0 ? [...scaled, { id: '\uffffbase', weight: baseWeight, read: (n: string, s: number, o: Float32Array) => base.read(n, s, o) }] : scaled;
  if (!(inputs.reduce((s, r) => s + r.weight, 0) > 0)) throw new RangeError('FedAvg weights must be finite, non-negative and sum to more than zero');
  await fedAvgStreamed(inputs, tensors, sink);
  return { ...clip, norms };
}
