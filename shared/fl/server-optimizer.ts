import { fedAvgStreamed, type BlockSink, type TensorBlockReader } from './fedavg.js';

/**
 * Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2, and
 * FedAvgM, Hsu et al. 2019): the round's pseudo-gradient is the FedAvg of the updates minus the
 * base, Δ = avg_k(w_k) - x, and the server applies it with its own optimizer:
 *
 *     fedavgm: m = β1 m + Δ                    x' = x + η m
 *     fedadam: m = β1 m + (1 - β1) Δ;  v = β2 v + (1 - β2) Δ²                   x' = x + η m / (√v + τ)
 *     fedyogi: m = β1 m + (1 - β1) Δ;  v = v - (1 - β2) Δ² sign(v - Δ²)         x' = x + η m / (√v + τ)
 *
 * Streamed: the FedAvg runs block by block (fedAvgStreamed) and each averaged block is combined
 * with the same block of the base and of the state, so memory is a few blocks whatever the model's
 * size. Pure math: the state arrives as a block reader and leaves through a block sink (no files).
 * Arithmetic is float64 within a block; the state is stored as float32 (see ServerStateIo), and a
 * round reads exactly what the previous one stored, so a restarted server computes the same bits.
 */

export type ServerOptimizerKind = 'fedavgm' | 'fedadam' | 'fedyogi';

export interface ServerOptimizerParams {
  kind: ServerOptimizerKind;
  /** Server learning rate η. */
  learningRate: number;
  /** Momentum β1 (fedavgm's server momentum β). */
  beta1: number;
  /** Second-moment decay β2 (fedadam, fedyogi). */
  beta2: number;
  /** Adaptivity τ (fedadam, fedyogi): also the initial √v, v_{-1} = τ². */
  tau: number;
}

/** State slots per kind: fedavgm keeps the momentum m; fedadam and fedyogi also the second moment v. */
export function stateSlots(kind: ServerOptimizerKind): readonly ('m' | 'v')[] {
  return kind === 'fedavgm' ? ['m'] : ['m', 'v'];
}

/** The state before the first round: m = 0, v = τ² (Reddi et al.: v_{-1} ≥ τ²). */
export function initialState(params: ServerOptimizerParams, slot: 'm' | 'v'): number {
  return slot === 'v' ? params.tau * params.tau : 0;
}

/** The server's state for one round: `read` gives the previous values (null: none yet), `write` takes the new ones. */
export interface ServerStateIo {
  /** Fills `out` and returns true, or returns false when that tensor has no state yet (then it starts from the initial state). */
  read: ((slot: 'm' | 'v', name: string, start: number, out: Float32Array) => Promise<boolean>) | null;
  write: (slot: 'm' | 'v', name: string, start: number, values: Float32Array) => Promise<void>;
}

/** One element of the update in float64: returns the new x and writes the new m, v into `s`. */
export function serverStep(p: ServerOptimizerParams, x: number, avg: number, s: { m: number; v: number }): number {
  const d = avg - x;
  if (p.kind === 'fedavgm') {
    s.m = p.beta1 * s.m + d;
    return x + p.learningRate * s.m;
  }
  s.m = p.beta1 * s.m + (1 - p.beta1) * d;
  const d2 = d * d;
  if (p.kind === 'fedadam') s.v = p.beta2 * s.v + (1 - p.beta2) * d2;
  else s.v = s.v - (1 - p.beta2) * d2 * Math.sign(s.v - d2);
  return x + (p.learningRate * s.m) / (Math.sqrt(s.v) + p.tau);
}

/**
 * One server-optimizer round over streamed updates: new weights to `sink`, new state to `state.write`,
 * both tensors in order, blocks ascending.
 */
export async function serverOptimizerStreamed(
  params: ServerOptimizerParams,
  readers: readonly TensorBlockReader[],
  base: TensorBlockReader,
  tensors: readonly { name: string; length: number }[],
  state: ServerStateIo,
  sink: BlockSink,
  blockElements?: number,
): Promise<void> {
  const slots = stateSlots(params.kind);
  let buffers: { x: Float32Array; m: Float32Array; v: Float32Array; out: Float32Array } | null = null;
  const s = { m: 0, v: 0 };
  await fedAvgStreamed(
    readers,
    tensors,
    async (name, start, avg) => {
      const n = avg.length;
      if (!buffers || buffers.x.length < n) buffers = { x: new Float32Array(n), m: new Float32Array(n), v: new Float32Array(n), out: new Float32Array(n) };
      const x = buffers.x.subarray(0, n);
      const m = buffers.m.subarray(0, n);
      const v = buffers.v.subarray(0, n);
      const out = buffers.out.subarray(0, n);
      await base.read(name, start, x);
      for (const slot of slots) {
        const target = slot === 'm' ? m : v;
        if (!state.read || !(await state.read(slot, name, start, target))) target.fill(initialState(params, slot));
      }
      for (let i = 0; i < n; i++) {
        s.m = m[i]!;
        s.v = v[i]!;
        out[i] = serverStep(params, x[i]!, avg[i]!, s);
        m[i] = s.m;
        v[i] = s.v;
      }
      for (const slot of slots) await state.write(slot, name, start, slot === 'm' ? m : v);
      await sink(name, start, out);
    },
    blockElements,
  );
}
