/**
 * The FedAvg inner loops as a small WebAssembly SIMD module, assembled here byte by byte (no
 * toolchain, nothing downloaded): 128-bit vectors fold four float32 inputs per instruction group
 * into the float64 accumulator, about three to four times the speed of the plain JavaScript loop
 * (shared/fl/fedavg.ts), which remains the fallback where WebAssembly SIMD is missing.
 *
 * The arithmetic is exactly the JavaScript loop's, operation for operation (float32 -> float64
 * promotion is exact, IEEE-754 multiply and add round the same way, the float64 -> float32
 * demotion rounds to nearest even like a Float32Array store), so both give bit-identical results.
 *
 * Exports (byte offsets into the shared memory; n values, a multiple of 4):
 *   fold{k}{mode}(acc, out, n, inv, x0..x(k-1), w0..w(k-1)) for k of 1, 2, 4:
 *                                 acc[i] = acc[i] + w0*x0[i] + ... + w(k-1)*x(k-1)[i]
 *     mode i:  start from 0 instead of acc[i];  mode f: out[i] = float32(sum * inv) instead of
 *     storing acc[i];  mode if: both (one pass does the whole average for k <= 4 inputs)
 *   finish(acc, out, n, inv)                     out[i] = float32(acc[i] * inv)
 *   nonfinite(p, n)                              1 when a float32 value is NaN or ±Infinity
 */

// The WebAssembly JS API exists in Node, but this project's TypeScript libs (ES2023, no DOM) do not
// declare it: the few members used here.
declare namespace WebAssembly {
  class Module {
    constructor(bytes: Uint8Array);
  }
  class Memory {
    constructor(descriptor: { initial: number });
    readonly buffer: ArrayBuffer;
  }
  class Instance {
    constructor(module: Module, imports: Record<string, Record<string, unknown>>);
    readonly exports: Record<string, unknown>;
  }
  function validate(bytes: Uint8Array): boolean;
}

const I32 = 0x7f;
const F64 = 0x7c;
const V128 = 0x7b;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const str = (s: string) => [...uleb(s.length), ...Buffer.from(s, 'utf8')];

// instructions
const localGet = (i: number) => [0x20, ...uleb(i)];
const localSet = (i: number) => [0x21, ...uleb(i)];
const localTee = (i: number) => [0x22, ...uleb(i)];
const i32Const = (v: number) => [0x41, ...sleb(v)];
const I32_ADD = [0x6a];
const I32_SHL = [0x74];
const I32_GE_U = [0x4f];
const simd = (op: number, ...imm: number[]) => [0xfd, ...uleb(op), ...imm];
const v128Load = (offset = 0) => simd(0x00, 0, ...uleb(offset));
const v128Store = (offset = 0) => simd(0x0b, 0, ...uleb(offset));
const HIGH_HALF = simd(0x0d, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
const JOIN_LOW_HALVES = simd(0x0d, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
const F64X2_SPLAT = simd(0x14);
const F32X4_DEMOTE = simd(0x5e);
const F64X2_PROMOTE_LOW = simd(0x5f);
const F64X2_ADD = simd(0xf0);
const I32X4_SPLAT = simd(0x11);
const I32X4_EQ = simd(0x37);
const V128_AND = simd(0x4e);
const V128_OR = simd(0x50);
const V128_ANY_TRUE = simd(0x53);
const F64X2_MUL = simd(0xf2);

/** while (i < end) { body; i += 16 } with i and end locals (byte offsets of float32 values). */
function loop16(i: number, end: number, body: number[]): number[] {
  return [
    0x02,
    0x40,
    0x03,
    0x40,
    ...localGet(i),
    ...localGet(end),
    ...I32_GE_U,
    0x0d,
    1,
    ...body,
    ...localGet(i),
    ...i32Const(16),
    ...I32_ADD,
    ...localSet(i),
    0x0c,
    0,
    0x0b,
    0x0b,
  ];
}

/**
 * Fold k inputs: params acc, out, n (i32), inv (f64), x0..x(k-1) (i32), w0..w(k-1) (f64).
 * `init`: start from 0 instead of loading the accumulator (saves a pass that zeroes it);
 * `final`: instead of storing the accumulator, write float32(sum * inv) to out (saves the pass
 * that finishes the average). The arithmetic is the same either way: 0 + w*x first, then the
 * additions left to right, then one multiplication and one rounding to float32.
 */
function foldBody(k: number, init: boolean, final: boolean): number[] {
  const ACC = 0;
  const OUT = 1;
  const N = 2;
  const INV = 3;
  const X = (j: number) => 4 + j;
  const W = (j: number) => 4 + k + j;
  // locals after the params: i, end, accAddr (i32), v, zero, invv (v128), wv0..wv(k-1) (v128)
  const firstLocal = 4 + 2 * k;
  const I = firstLocal;
  const END = firstLocal + 1;
  const A = firstLocal + 2;
  const V = firstLocal + 3;
  const ZERO = firstLocal + 4; // locals start zeroed: +0.0 in both lanes
  const IV = firstLocal + 5;
  const WV = (j: number) => firstLocal + 6 + j;
  const locals = vec([
    [...uleb(3), I32],
    [...uleb(3 + k), V128],
  ]);
  const code: number[] = [];
  for (let j = 0; j < k; j++) code.push(...localGet(W(j)), ...F64X2_SPLAT, ...localSet(WV(j)));
  code.push(...localGet(INV), ...F64X2_SPLAT, ...localSet(IV));
  code.push(...localGet(N), ...i32Const(2), ...I32_SHL, ...localSet(END));
  const body: number[] = [];
  // accAddr = acc + 2 * i (8 bytes of accumulator per 4 bytes of input)
  body.push(...localGet(ACC), ...localGet(I), ...localGet(I), ...I32_ADD, ...I32_ADD, ...localSet(A));
  if (final) body.push(...localGet(OUT), ...localGet(I), ...I32_ADD); // address of the 4 results
  for (const half of [0, 1]) {
    if (!final) body.push(...localGet(A)); // address for the accumulator store
    body.push(...(init ? localGet(ZERO) : [...localGet(A), ...v128Load(16 * half)]));
    for (let j = 0; j < k; j++) {
      // four float32 inputs; the low pair for half 0, the high pair (moved down) for half 1
      body.push(...localGet(X(j)), ...localGet(I), ...I32_ADD, ...v128Load());
      if (half === 1) body.push(...localTee(V), ...localGet(V), ...HIGH_HALF);
      body.push(...F64X2_PROMOTE_LOW, ...localGet(WV(j)), ...F64X2_MUL, ...F64X2_ADD);
    }
    if (final) body.push(...localGet(IV), ...F64X2_MUL, ...F32X4_DEMOTE);
    else body.push(...v128Store(16 * half));
  }
  if (final) body.push(...JOIN_LOW_HALVES, ...v128Store(0));
  code.push(...loop16(I, END, body));
  return [...locals, ...code, 0x0b];
}

const FOLD_WIDTHS = [1, 2, 4] as const;
const FOLD_MODES = ['', 'i', 'f', 'if'] as const;
export type FoldMode = (typeof FOLD_MODES)[number];

function finishBody(): number[] {
  // params acc, out, n (i32), inv (f64); locals i, end, a (i32), invv (v128)
  const ACC = 0;
  const OUT = 1;
  const N = 2;
  const INV = 3;
  const I = 4;
  const END = 5;
  const A = 6;
  const IV = 7;
  const locals = vec([
    [...uleb(3), I32],
    [...uleb(1), V128],
  ]);
  const code = [...localGet(INV), ...F64X2_SPLAT, ...localSet(IV), ...localGet(N), ...i32Const(2), ...I32_SHL, ...localSet(END)];
  const body = [
    ...localGet(ACC),
    ...localGet(I),
    ...localGet(I),
    ...I32_ADD,
    ...I32_ADD,
    ...localSet(A),
    ...localGet(OUT),
    ...localGet(I),
    ...I32_ADD,
    ...localGet(A),
    ...v128Load(0),
    ...localGet(IV),
    ...F64X2_MUL,
    ...F32X4_DEMOTE,
    ...localGet(A),
    ...v128Load(16),
    ...localGet(IV),
    ...F64X2_MUL,
    ...F32X4_DEMOTE,
    ...JOIN_LOW_HALVES,
    ...v128Store(0),
  ];
  code.push(...loop16(I, END, body));
  return [...locals, ...code, 0x0b];
}

function nonfiniteBody(): number[] {
  // params p, n (i32) -> i32; locals i, end (i32), acc, mask (v128)
  const P = 0;
  const N = 1;
  const I = 2;
  const END = 3;
  const ACC = 4;
  const MASK = 5;
  const locals = vec([
    [...uleb(2), I32],
    [...uleb(2), V128],
  ]);
  const code = [...i32Const(0x7f800000), ...I32X4_SPLAT, ...localSet(MASK), ...localGet(N), ...i32Const(2), ...I32_SHL, ...localSet(END)];
  // exponent bits all ones: NaN or ±Infinity
  const body = [
    ...localGet(ACC),
    ...localGet(P),
    ...localGet(I),
    ...I32_ADD,
    ...v128Load(),
    ...localGet(MASK),
    ...V128_AND,
    ...localGet(MASK),
    ...I32X4_EQ,
    ...V128_OR,
    ...localSet(ACC),
  ];
  code.push(...loop16(I, END, body), ...localGet(ACC), ...V128_ANY_TRUE);
  return [...locals, ...code, 0x0b];
}

function moduleBytes(): Uint8Array {
  const foldType = (k: number) => [
    0x60,
    ...vec([[I32], [I32], [I32], [F64], ...Array.from({ length: k }, () => [I32]), ...Array.from({ length: k }, () => [F64])]),
    0,
  ];
  const finishType = [0x60, ...vec([[I32], [I32], [I32], [F64]]), 0];
  const nonfiniteType = [0x60, ...vec([[I32], [I32]]), ...vec([[I32]])];
  // types: 0 finish, 1 nonfinite, 2.. one per fold width
  const types = section(1, vec([finishType, nonfiniteType, ...FOLD_WIDTHS.map(foldType)]));
  const imports = section(2, vec([[...str('env'), ...str('memory'), 0x02, 0x00, 0x01]]));
  const folds = FOLD_WIDTHS.flatMap((k, t) =>
    FOLD_MODES.map((mode) => ({ name: `fold${k}${mode}`, type: 2 + t, body: foldBody(k, mode.includes('i'), mode.includes('f')) })),
  );
  const funcs = section(3, vec([[0], [1], ...folds.map((f) => [f.type])]));
  const exports = section(7, vec([[...str('finish'), 0x00, 0], [...str('nonfinite'), 0x00, 1], ...folds.map((f, i) => [...str(f.name), 0x00, 2 + i])]));
  const bodies = [finishBody(), nonfiniteBody(), ...folds.map((f) => f.body)].map((b) => [...uleb(b.length), ...b]);
  const code = section(10, vec(bodies));
  return Uint8Array.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...types, ...imports, ...funcs, ...exports, ...code]);
}

export type FoldKernel = (acc: number, out: number, n: number, inv: number, ...inputsThenWeights: number[]) => void;

export interface SimdKernels {
  memory: WebAssembly.Memory;
  /** fold[k][mode](acc, out, n, inv, x0..x(k-1), w0..w(k-1)) for k of 1, 2, 4. */
  fold: Record<number, Record<FoldMode, FoldKernel>>;
  finish(acc: number, out: number, n: number, inv: number): void;
  /** 1 when any of n float32 values at p is NaN or ±Infinity, else 0 (n a multiple of 4). */
  nonfinite(p: number, n: number): number;
}

let compiled: WebAssembly.Module | null | undefined;

function compiledModule(): WebAssembly.Module | null {
  if (compiled !== undefined) return compiled;
  try {
    const bytes = moduleBytes();
    compiled = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
  } catch {
    compiled = null;
  }
  return compiled;
}

/** The kernels over a fresh memory of at least `bytes` bytes, or null without WebAssembly SIMD. */
export function simdKernels(bytes: number): SimdKernels | null {
  if (process.env.FEDLINE_NO_SIMD === '1') return null;
  const mod = compiledModule();
  if (!mod) return null;
  const memory = new WebAssembly.Memory({ initial: Math.max(1, Math.ceil(bytes / 65536)) });
  const instance = new WebAssembly.Instance(mod, { env: { memory } });
  const e = instance.exports as Record<string, unknown>;
  const fold: SimdKernels['fold'] = {};
  for (const k of FOLD_WIDTHS) fold[k] = Object.fromEntries(FOLD_MODES.map((m) => [m, e[`fold${k}${m}`] as FoldKernel])) as Record<FoldMode, FoldKernel>;
  return { memory, fold, finish: e.finish as SimdKernels['finish'], nonfinite: e.nonfinite as SimdKernels['nonfinite'] };
}
