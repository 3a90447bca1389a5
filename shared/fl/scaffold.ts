import type { BlockSink, TensorBlockReader } from './fedavg.js';

/**
 * SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
 * Learning", Algorithm 1 with option II), as fedline runs it:
 *
 *   client i, from the global x with the server variate c and its own variate c_i, K local steps:
 *       y <- y - η_l (g(y) - c_i + c)                       (training/tfjs-trainer.ts; with momentum or
 *                                                            adam: their step, then - η_l (c - c_i))
 *       c_i+ = c_i - c + (x - y) / (K η_l)                   (clientVariate, kept on the agent)
 *   server, over the round's results S of N clients, p_i = n_i / Σ_S n_j (sample weights):
 *       x' = x + η_g Σ_S p_i (y_i - x)                       (η_g = 1: exactly FedAvg's average)
 *       c' = c + (|S| / N) Σ_S p_i Δc_i,   Δc_i = c_i+ - c_i = -c - (y_i - x) / (K_i η_l)
 *
 * Δc_i is a function of what the server already has (x, c, y_i, η_l) and of K_i, so agents send
 * the number of steps they took instead of Δc_i: the upload costs what FedAvg's does. The means
 * are sample-weighted like FedAvg's (the paper's are uniform because its objective is the plain
 * mean of the clients' losses; fedline's objective weights clients by their images, and c must
 * estimate the gradient of the objective the model follows, so c uses the same weights as x).
 *
 * Streamed block by block over the readers, in ascending id order, float64 within a block; the
 * state c is float32 (the server optimizers' state files, aggregator/server-state.ts) and a round
 * reads exactly what the previous one stored, so a restarted server computes the same bits.
 */

export interface ScaffoldParams {
  /** Server learning rate η_g (1: the new weights are FedAvg's). */
  globalLearningRate: number;
  /** The round's local learning rate η_l, as announced to the agents. */
  localLearningRate: number;
  /** Clients in the federation, N (c moves by |S|/N of the results' mean change). */
  clients: number;
}

/** A result with the optimizer steps its client took this round (K_i). */
export type ScaffoldReader = TensorBlockReader & { readonly steps: number };

/** The server variate c for one round: `read` gives the previous values (false: none yet, c = 0), `write` takes the new ones. */
export interface ControlStateIo {
  read: ((name: string, start: number, out: Float32Array) => Promise<boolean>) | null;
  write: (name: string, start: number, values: Float32Array) => Promise<void>;
}

const DEFAULT_BLOCK_ELEMENTS = 1 << 16;

function checkInputs(p: ScaffoldParams, readers: readonly ScaffoldReader[]): void {
  if (readers.length === 0) throw new RangeError('SCAFFOLD needs at least one result');
  if (!(p.localLearningRate > 0) || !Number.isFinite(p.localLearningRate)) throw new RangeError('SCAFFOLD needs a positive local learning rate');
  if (!(p.clients >= readers.length)) throw new RangeError(`SCAFFOLD: ${readers.length} results from a federation of ${p.clients} clients`);
  for (const r of readers) {
    if (!(r.weight >= 0) || !Number.isFinite(r.weight)) throw new RangeError(`SCAFFOLD: result ${r.id} has weight ${r.weight}`);
    if (!Number.isInteger(r.steps) || r.steps < 1) throw new RangeError(`SCAFFOLD: result ${r.id} took ${r.steps} local steps`);
  }
  if (!(readers.reduce((s, r) => s + r.weight, 0) > 0)) throw new RangeError('SCAFFOLD weights must sum to more than zero');
}

/**
 * One SCAFFOLD server round: new weights of every tensor to `sink` and the new c to `state.write`,
 * tensors in order, blocks ascending. Memory: (results + 4) blocks whatever the model's size.
 */
export async function scaffoldServerStreamed(
  p: ScaffoldParams,
  readers: readonly ScaffoldReader[],
  base: TensorBlockReader,
  tensors: readonly { name: string; length: number }[],
  state: ControlStateIo,
  sink: BlockSink,
  blockElements = DEFAULT_BLOCK_ELEMENTS,
): Promise<void> {
  checkInputs(p, readers);
  const ordered = [...readers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const totalWeight = ordered.reduce((s, r) => s + r.weight, 0);
  const inv = 1 / totalWeight;
  const fraction = ordered.length / p.clients;
  const maxN = Math.min(
    blockElements,
    tensors.reduce((m, t) => Math.max(m, t.length), 0),
  );
  const x = new Float32Array(maxN);
  const c = new Float32Array(maxN);
  const y = new Float32Array(maxN);
  const out = new Float32Array(maxN);
  const accY = new Float64Array(maxN);
  const accD = new Float64Array(maxN);
  for (const { name, length } of tensors) {
    for (let start = 0; start < length; start += blockElements) {
      const n = Math.min(blockElements, length - start);
      const xs = x.subarray(0, n);
      const cs = c.subarray(0, n);
      await base.read(name, start, xs);
      if (!state.read || !(await state.read(name, start, cs))) cs.fill(0);
      accY.fill(0, 0, n);
      accD.fill(0, 0, n);
      for (const r of ordered) {
        const ys = y.subarray(0, n);
        await r.read(name, start, ys);
        const wy = r.weight;
        // Σ p_i (y_i - x) / (K_i η_l), p_i's normalisation applied once below.
        const wd = r.weight / (r.steps * p.localLearningRate);
        for (let i = 0; i < n; i++) {
          accY[i] = accY[i]! + wy * ys[i]!;
          accD[i] = accD[i]! + wd * (ys[i]! - xs[i]!);
        }
      }
      const os = out.subarray(0, n);
      for (let i = 0; i < n; i++) {
        const avg = accY[i]! * inv;
        os[i] = p.globalLearningRate === 1 ? avg : xs[i]! + p.globalLearningRate * (avg - xs[i]!);
        // Σ p_i Δc_i = -c - Σ p_i (y_i - x) / (K_i η_l)
        cs[i] = cs[i]! + fraction * (-cs[i]! - accD[i]! * inv);
      }
      await state.write(name, start, cs);
      await sink(name, start, os);
    }
  }
}

/**
 * The client's new variate (option II): c_i+ = c_i - c + (x - y) / (K η_l), in float64, stored as
 * float32. `ci` and `c` null mean zero (a client's first round; the server's before any round).
 */
export function clientVariate(
  x: Float32Array,
  y: Float32Array,
  c: Float32Array | null,
  ci: Float32Array | null,
  steps: number,
  localLearningRate: number,
): Float32Array {
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`SCAFFOLD: ${steps} local steps`);
  const n = x.length;
  if (y.length !== n || (c && c.length !== n) || (ci && ci.length !== n)) throw new RangeError('SCAFFOLD: variate lengths differ');
  const scale = 1 / (steps * localLearningRate);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (ci ? ci[i]! : 0) - (c ? c[i]! : 0) + (x[i]! - y[i]!) * scale;
  return out;
}

/** Bytes of the server variate c on the wire per round: float32 per federated weight (the bundle's header comes on top). */
export function controlValueBytes(tensors: readonly { length: number }[]): number {
  return tensors.reduce((s, t) => s + t.length * 4, 0);
}
