import type { Tf } from './backend.js';
import { maxPoolGradNhwc, poolGradGeometry } from './cpu-kernels.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { filterGrad } from './wasm-filter-grad.js';
import { inputGrad } from './wasm-input-grad.js';
import { release, view, WasmOps, type KernelFunc, type TensorInfo, type WasmBackend } from './wasm-kernel-ops.js';

/**
 * Training kernels for the WebAssembly backend (@tensorflow/tfjs-backend-wasm 4.22). As shipped it
 * cannot train a CNN: it has no Conv2DBackpropFilter (nor the depthwise backprop kernels), and its
 * Conv2DBackpropInput is a plain C++ loop, ~5x slower than its XNNPACK forward convolution.
 * Every gradient below is computed by its fast XNNPACK kernels (forward convolution, GEMM; SIMD)
 * on rearranged operands; only O(size) rearrangements happen outside them.
 *
 * Filter gradient (NHWC x: [B,H,W,Ci], dy: [B,OH,OW,Co], stride s, padding pt/pl):
 *   dW[kh,kw,ci,co] = sum_{b,oh,ow} x[b, oh*s + kh - pt, ow*s + kw - pl, ci] * dy[b,oh,ow,co]
 * Stride 1 (every layer of a VGG): one XNNPACK fully-connected GEMM over x laid out on a padded
 * grid, where each filter tap is a constant offset (wasm-filter-grad.ts). Other strides: a
 * forward convolution whose batch is Ci, whose input channels are B and whose kernel is dy:
 *   input  x'  = transpose(x,  [3,1,2,0])   [Ci, H, W, B]
 *   kernel dy' = transpose(dy, [1,2,0,3])   [OH, OW, B, Co], dilated by s
 *   stride 1, padding pt/pl (bottom/right as needed), output [Ci, FH, FW, Co].
 *
 * Input gradient: dx = dilate(dy, s) convolved with the kernel flipped in space and with in/out
 * channels swapped, padded by FH-1-pt on top and FW-1-pl on the left (a transposed convolution).
 *
 * Depthwise (filter [FH,FW,C,M]): the same identities with the forward depthwise convolution;
 * the batch becomes part of the channel axis (channel b*C + c) and is summed out afterwards.
 *
 * Other kernels of a training step that the stock backend makes slow, replaced where measured
 * (npm run bench:train profile): MaxPoolGrad (a loop over every window for every input pixel),
 * Sum over leading axes (a bias gradient: the stock kernel transposes first), 2-D MatMul with a
 * transposed operand (a scalar loop; done here with explicit transposes and the XNNPACK GEMM), and
 * Identity (tfjs clones every tensor a gradient needs; the stock kernel copies, this one shares the
 * buffer by reference count, as the cpu backend does: kernels never write into their inputs).
 *
 * Files: wasm-kernel-ops.ts (heap views, the XNNPACK forward convolution, the stock kernels),
 * wasm-filter-grad.ts, wasm-input-grad.ts; the registration and the small kernels are here.
 */

let installedFor: Tf | null = null;

/**
 * Register the backprop kernels on the `wasm` backend (idempotent). The wasm backend must be
 * registered (import '@tensorflow/tfjs-backend-wasm') before this is called.
 */
export function installWasmTrainingKernels(tf: Tf): void {
  if (installedFor === tf) return;
  const ops = new WasmOps(tf);
  const replace = (kernelName: string, kernelFunc: KernelFunc) => {
    if (tf.getKernel(kernelName, 'wasm')) tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as never });
  };
  replace('Conv2DBackpropFilter', ({ inputs, backend, attrs }) => filterGrad(ops, backend, inputs.x!, inputs.dy!, attrs.filterShape as number[], attrs, false));
  replace('Conv2DBackpropInput', (args) => {
    const { inputs, backend, attrs } = args;
    return inputGrad(ops, backend, inputs.dy!, inputs.filter!, attrs.inputShape as number[], attrs, false) ?? ops.stockBackpropInput(args);
  });
  replace('DepthwiseConv2dNativeBackpropFilter', ({ inputs, backend, attrs }) =>
    filterGrad(ops, backend, inputs.x!, inputs.dy!, attrs.filterShape as number[], attrs, true),
  );
  replace('DepthwiseConv2dNativeBackpropInput', ({ inputs, backend, attrs }) => {
    const dx = inputGrad(ops, backend, inputs.dy!, inputs.filter!, attrs.inputShape as number[], attrs, true);
    if (!dx)
      throw new FedlineError(
        ErrorCodes.BACKEND,
        'depthwise convolution gradient: explicit padding larger than the filter is not supported on the wasm backend',
      );
    return dx;
  });
  replace('MaxPoolGrad', ({ inputs, backend, attrs }) => {
    const x = inputs.input!;
    const info = tf.backend_util.computePool2DInfo(
      x.shape as [number, number, number, number],
      attrs.filterSize as number,
      attrs.strides as number,
      1,
      attrs.pad as 'same',
      attrs.dimRoundingMode as 'floor' | undefined,
    );
    const dx = backend.makeOutput([...x.shape], 'float32');
    maxPoolGradNhwc(
      view(backend, x),
      view(backend, inputs.dy!),
      poolGradGeometry(info),
      view(backend, dx),
      inputs.output ? view(backend, inputs.output) : undefined,
    );
    return dx;
  });
  replace('Sum', (args) => sumLeadingAxes(ops, args));
  replace('BatchMatMul', (args) => {
    const { inputs, backend, attrs } = args;
    const a = inputs.a!;
    const b = inputs.b!;
    const batchOf = (t: TensorInfo) => t.shape.slice(0, -2).reduce((p, q) => p * q, 1);
    if (a.dtype !== 'float32' || b.dtype !== 'float32' || batchOf(a) !== 1 || batchOf(b) !== 1 || a.shape.length < 2 || b.shape.length < 2)
      return ops.stockBatchMatMul(args);
    const out = matMul2d(ops, backend, a, b, Boolean(attrs.transposeA), Boolean(attrs.transposeB));
    const rank = Math.max(a.shape.length, b.shape.length);
    return { ...out, shape: [...new Array<number>(rank - 2).fill(1), out.shape[1]!, out.shape[2]!] };
  });
  replace('Identity', (args) => {
    const x = args.inputs.x!;
    if (x.dtype === 'string') return ops.stockIdentity(args);
    args.backend.incRef(x.dataId);
    return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
  });
  installedFor = tf;
}

/** Sum over the leading axes (a bias gradient) in one float64 pass; anything else: the stock kernel. */
function sumLeadingAxes(ops: WasmOps, args: Parameters<KernelFunc>[0]): TensorInfo {
  const { inputs, backend, attrs } = args;
  const x = inputs.x!;
  const rank = x.shape.length;
  const axes = ops.tf.util.parseAxisParam(attrs.axis as number | number[], x.shape).sort((p, q) => p - q);
  const leading = axes.length > 0 && axes.length < rank && axes.every((v, i) => v === i);
  if (x.dtype !== 'float32' || !leading) return ops.stockSum(args);
  // Reduce the leading axes (a bias gradient: [B,H,W,C] -> [C]) in one pass, in float64.
  const rows = x.shape.slice(0, axes.length).reduce((p, q) => p * q, 1);
  const outShape = attrs.keepDims ? x.shape.map((d, i) => (i < axes.length ? 1 : d)) : x.shape.slice(axes.length);
  const out = backend.makeOutput(outShape, 'float32');
  const src = view(backend, x);
  const width = src.length / Math.max(rows, 1);
  const acc = new Float64Array(width);
  let r = 0;
  // Four rows at a time: a quarter of the read-modify-writes of the accumulator.
  for (; r + 4 <= rows; r += 4) {
    const o = r * width;
    for (let c = 0; c < width; c++) acc[c] += src[o + c]! + src[o + width + c]! + src[o + 2 * width + c]! + src[o + 3 * width + c]!;
  }
  for (; r < rows; r++) for (let c = 0, o = r * width; c < width; c++) acc[c] += src[o + c]!;
  view(backend, out).set(acc);
  return out;
}

/**
 * C[M,N] = opA(A)[M,K] opB(B)[K,N] on the stock kernel's fast path: without transposes it is an
 * XNNPACK fully-connected GEMM whose second operand gets packed; with a transpose flag it is a
 * scalar loop. So transpose explicitly, either to rows opA(A) times weights opB(B), or to rows
 * opB(B)^T times weights opA(A)^T and transpose the result; the cheaper in elements moved.
 */
function matMul2d(ops: WasmOps, be: WasmBackend, a: TensorInfo, b: TensorInfo, transposeA: boolean, transposeB: boolean): TensorInfo {
  const [ar, ac] = a.shape.slice(-2) as [number, number];
  const [br, bc] = b.shape.slice(-2) as [number, number];
  const m = transposeA ? ac : ar;
  const k = transposeA ? ar : ac;
  const n = transposeB ? br : bc;
  const a2 = { ...a, shape: [ar, ac] };
  const b2 = { ...b, shape: [br, bc] };
  const direct = k * n + (transposeA ? m * k : 0) + (transposeB ? k * n : 0);
  const swapped = k * m + (transposeB ? 0 : k * n) + (transposeA ? 0 : m * k) + m * n;
  const temps: TensorInfo[] = [];
  const mat = (t: TensorInfo, flip: boolean, rows: number, cols: number) => {
    if (!flip) return { ...t, shape: [1, rows, cols] };
    const r = ops.transpose(be, t, [1, 0]);
    temps.push(r);
    return { ...r, shape: [1, rows, cols] };
  };
  const gemm = (rows: TensorInfo, weights: TensorInfo) =>
    ops.stockBatchMatMul({ inputs: { a: rows, b: weights }, backend: be, attrs: { transposeA: false, transposeB: false } });
  try {
    if (direct <= swapped) return gemm(mat(a2, transposeA, m, k), mat(b2, transposeB, k, n));
    const outT = gemm(mat(b2, !transposeB, n, k), mat(a2, !transposeA, k, m)); // [1, N, M]
    temps.push(outT);
    const out = ops.transpose(be, { ...outT, shape: [n, m] }, [1, 0]);
    return { ...out, shape: [1, m, n] };
  } finally {
    release(be, ...temps);
  }
}
