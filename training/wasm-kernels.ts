import type { Tf } from './backend.js';
import { maxPoolGradNhwc, poolGradGeometry } from './cpu-kernels.js';

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
 * grid, where each filter tap is a constant offset (filterGradStride1 below). Other strides: a
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
 */

type DataId = object;
interface TensorInfo {
  dataId: DataId;
  shape: number[];
  dtype: string;
}

interface WasmModule {
  cwrap(name: string, ret: null, args: string[]): (...args: number[]) => void;
  HEAPU8: Uint8Array;
}

/** The parts of tfjs-backend-wasm's BackendWasm these kernels use. */
interface WasmBackend {
  wasm: WasmModule;
  dataIdMap: { get(dataId: DataId): { id: number; memoryOffset: number } };
  makeOutput(shape: number[], dtype: 'float32'): TensorInfo;
  disposeData(dataId: DataId, force?: boolean): boolean;
  incRef(dataId: DataId): void;
}

type KernelFunc = (args: { inputs: Record<string, TensorInfo>; backend: WasmBackend; attrs: Record<string, unknown> }) => TensorInfo;

interface ConvCall {
  batch: number;
  inHeight: number;
  inWidth: number;
  inChannels: number;
  outChannels: number;
  filterHeight: number;
  filterWidth: number;
  padTop: number;
  padBottom: number;
  padLeft: number;
  padRight: number;
  strideHeight: number;
  strideWidth: number;
  dilationHeight: number;
  dilationWidth: number;
}

/** Output size of a convolution with explicit padding (XNNPACK's formula). */
export function convOutSize(inSize: number, padBefore: number, padAfter: number, filter: number, stride: number, dilation: number): number {
  const effective = (filter - 1) * dilation + 1;
  return Math.floor((inSize + padBefore + padAfter - effective) / stride) + 1;
}

let installedFor: Tf | null = null;

/** Largest kernel (floats) of one filter-gradient convolution; bigger ones are split by images. */
const FILTER_GRAD_KERNEL_FLOATS = 256 * 1024;

/** Largest unfolded input (floats) of one stride-1 filter-gradient GEMM; bigger batches are split by images. 16M floats = 64 MiB. */
const UNFOLD_FLOATS = 16 * 1024 * 1024;

/**
 * Register the backprop kernels on the `wasm` backend (idempotent). The wasm backend must be
 * registered (import '@tensorflow/tfjs-backend-wasm') before this is called.
 */
export function installWasmTrainingKernels(tf: Tf): void {
  if (installedFor === tf) return;
  const getKernel = (name: string): KernelFunc => {
    const k = tf.getKernel(name, 'wasm');
    if (!k) throw new Error(`the wasm backend has no ${name} kernel (is @tensorflow/tfjs-backend-wasm 4.22 loaded?)`);
    return k.kernelFunc as unknown as KernelFunc;
  };
  const transposeKernel = getKernel('Transpose');
  const stockBackpropInput = getKernel('Conv2DBackpropInput');
  const stockSum = getKernel('Sum');
  const stockBatchMatMul = getKernel('BatchMatMul');
  const stockIdentity = getKernel('Identity');
  const wrapped = new WeakMap<WasmModule, { conv2d: (...a: number[]) => void; depthwise: (...a: number[]) => void }>();
  const fns = (be: WasmBackend) => {
    let f = wrapped.get(be.wasm);
    if (!f) {
      const args = new Array<string>(19).fill('number');
      f = { conv2d: be.wasm.cwrap('Conv2D', null, args), depthwise: be.wasm.cwrap('DepthwiseConv2dNative', null, args) };
      wrapped.set(be.wasm, f);
    }
    return f;
  };

  const transpose = (be: WasmBackend, x: TensorInfo, perm: number[]) => transposeKernel({ inputs: { x }, backend: be, attrs: { perm } });
  const release = (be: WasmBackend, ...infos: TensorInfo[]) => {
    for (const t of infos) be.disposeData(t.dataId);
  };
  /** A float32 view of a tensor's bytes on the wasm heap; take it after the last allocation (the heap may grow and move). */
  const view = (be: WasmBackend, t: TensorInfo) => new Float32Array(be.wasm.HEAPU8.buffer, be.dataIdMap.get(t.dataId).memoryOffset, t.shape.reduce((a, b) => a * b, 1));

  /** XNNPACK forward convolution (regular or depthwise) with explicit padding; returns a new NHWC tensor. */
  const forwardConv = (be: WasmBackend, x: TensorInfo, filter: TensorInfo, c: ConvCall, depthwise: boolean): TensorInfo => {
    const outHeight = convOutSize(c.inHeight, c.padTop, c.padBottom, c.filterHeight, c.strideHeight, c.dilationHeight);
    const outWidth = convOutSize(c.inWidth, c.padLeft, c.padRight, c.filterWidth, c.strideWidth, c.dilationWidth);
    const out = be.makeOutput([c.batch, outHeight, outWidth, c.outChannels], 'float32');
    const id = (t: TensorInfo) => be.dataIdMap.get(t.dataId).id;
    // prettier-ignore
    (depthwise ? fns(be).depthwise : fns(be).conv2d)(
      id(x), c.batch, c.inHeight, c.inWidth, id(filter), c.filterHeight, c.filterWidth,
      c.padTop, c.padRight, c.padBottom, c.padLeft, /* isSamePad */ 0,
      c.dilationHeight, c.dilationWidth, c.strideHeight, c.strideWidth, c.inChannels, c.outChannels, id(out));
    return out;
  };

  /** Images b0 .. b0+n-1 of an NHWC tensor, as a tensor of their own (one copy of contiguous memory). */
  const slab = (be: WasmBackend, t: TensorInfo, b0: number, n: number): TensorInfo => {
    const per = t.shape.slice(1).reduce((p, q) => p * q, 1);
    const out = be.makeOutput([n, ...t.shape.slice(1)], 'float32');
    view(be, out).set(view(be, t).subarray(b0 * per, (b0 + n) * per));
    return out;
  };

  /** dy [B,OH,OW,K] with (s-1) zeros between rows and columns: [B,(OH-1)*sh+1,(OW-1)*sw+1,K]. */
  const dilate = (be: WasmBackend, dy: TensorInfo, sh: number, sw: number): TensorInfo => {
    if (sh === 1 && sw === 1) return dy;
    const [b, oh, ow, k] = dy.shape as [number, number, number, number];
    const dh = (oh - 1) * sh + 1;
    const dw = (ow - 1) * sw + 1;
    const out = be.makeOutput([b, dh, dw, k], 'float32');
    const src = view(be, dy);
    const dst = view(be, out);
    dst.fill(0);
    for (let n = 0; n < b; n++)
      for (let y = 0; y < oh; y++)
        for (let x = 0; x < ow; x++) {
          const from = ((n * oh + y) * ow + x) * k;
          dst.set(src.subarray(from, from + k), ((n * dh + y * sh) * dw + x * sw) * k);
        }
    return out;
  };

  const convInfo = (xShape: number[], filterShape: number[], attrs: Record<string, unknown>, depthwise: boolean) => {
    const dataFormat = attrs.dataFormat === 'NCHW' ? 'channelsFirst' : 'channelsLast';
    if (dataFormat !== 'channelsLast') throw new Error('the wasm backend trains NHWC (channelsLast) convolutions only');
    const info = tf.backend_util.computeConv2DInfo(
      xShape as [number, number, number, number],
      filterShape as [number, number, number, number],
      attrs.strides as [number, number],
      (attrs.dilations as [number, number] | undefined) ?? 1,
      attrs.pad as 'same',
      attrs.dimRoundingMode as 'floor' | undefined,
      depthwise,
      dataFormat,
    );
    if (info.dilationHeight !== 1 || info.dilationWidth !== 1) throw new Error('convolution gradients with dilation > 1 are not supported (nor by tfjs itself)');
    return info;
  };

  /** dW via a forward convolution over the batch (see the file comment); depthwise sums the batch out at the end. */
  const filterGrad = (be: WasmBackend, x: TensorInfo, dy: TensorInfo, filterShape: number[], attrs: Record<string, unknown>, depthwise: boolean): TensorInfo => {
    const info = convInfo(x.shape, filterShape, attrs, depthwise);
    const { batchSize: b, inHeight: h, inWidth: w, inChannels: ci, outHeight: oh, outWidth: ow, filterHeight: fh, filterWidth: fw, strideHeight: sh, strideWidth: sw } = info;
    const pt = info.padInfo.top;
    const pl = info.padInfo.left;
    // Rows/columns of padding after the input so that the output covers the whole filter.
    const pb = Math.max(0, fh + (oh - 1) * sh - h - pt);
    const pr = Math.max(0, fw + (ow - 1) * sw - w - pl);
    if (!depthwise && sh === 1 && sw === 1) {
      return filterGradStride1(be, x, dy, info);
    }
    if (!depthwise) {
      const co = info.outChannels;
      // The packed kernel of each convolution (dy of `chunk` images) is kept near L2-cache size:
      // XNNPACK's GEMM streams the whole packed kernel once per few output rows and does not block
      // it, so a big one (the first layer's dy is 8 MB at batch 32) makes the GEMM memory-bound.
      const chunk = Math.max(1, Math.min(b, Math.floor(FILTER_GRAD_KERNEL_FLOATS / (oh * ow * co))));
      const acc = new Float64Array(ci * fh * fw * co); // [Ci, FH, FW, Co]
      for (let b0 = 0; b0 < b; b0 += chunk) {
        const n = Math.min(chunk, b - b0);
        const xs = n === b ? x : slab(be, x, b0, n);
        const dys = n === b ? dy : slab(be, dy, b0, n);
        const xT = transpose(be, xs, [3, 1, 2, 0]); // [Ci, H, W, n]
        const dyT = transpose(be, dys, [1, 2, 0, 3]); // [OH, OW, n, Co]
        if (xs !== x) release(be, xs, dys);
        let out: TensorInfo;
        try {
          out = forwardConv(be, xT, dyT, { batch: ci, inHeight: h, inWidth: w, inChannels: n, outChannels: co, filterHeight: oh, filterWidth: ow, padTop: pt, padBottom: pb, padLeft: pl, padRight: pr, strideHeight: 1, strideWidth: 1, dilationHeight: sh, dilationWidth: sw }, false);
        } finally {
          release(be, xT, dyT);
        }
        // out: [Ci, >= FH, >= FW, Co]; extra rows/columns (valid padding leaving input pixels unused) are dropped.
        const [, gh, gw] = out.shape as [number, number, number, number];
        const src = view(be, out);
        for (let c = 0, a = 0; c < ci; c++)
          for (let y = 0; y < fh; y++)
            for (let z = 0; z < fw; z++) {
              const from = ((c * gh + y) * gw + z) * co;
              for (let o = 0; o < co; o++) acc[a++] += src[from + o]!;
            }
        release(be, out);
      }
      const result = be.makeOutput([fh, fw, ci, co], 'float32');
      const dst = view(be, result);
      for (let c = 0, a = 0; c < ci; c++)
        for (let y = 0; y < fh; y++)
          for (let z = 0; z < fw; z++) {
            const to = ((y * fw + z) * ci + c) * co;
            for (let o = 0; o < co; o++) dst[to + o] = acc[a++]!;
          }
      return result;
    }
    // Depthwise: channel k = b*C + c of a 1-image batch, kernel dy[b, :, :, c*M + m].
    const m = info.outChannels / ci;
    const xT = transpose(be, x, [1, 2, 0, 3]); // [H, W, B, C] = [1, H, W, B*C]
    const dy5 = { ...dy, shape: [b, oh, ow, ci, m] };
    const dyT = transpose(be, dy5, [1, 2, 0, 3, 4]); // [OH, OW, B, C, M] = [OH, OW, B*C, M]
    let out: TensorInfo;
    try {
      out = forwardConv(be, xT, dyT, { batch: 1, inHeight: h, inWidth: w, inChannels: b * ci, outChannels: b * ci * m, filterHeight: oh, filterWidth: ow, padTop: pt, padBottom: pb, padLeft: pl, padRight: pr, strideHeight: 1, strideWidth: 1, dilationHeight: sh, dilationWidth: sw }, true);
    } finally {
      release(be, xT, dyT);
    }
    const gw = out.shape[2]!; // out: [1, >= FH, >= FW, B*C*M]; extra rows/columns are dropped
    const result = be.makeOutput([fh, fw, ci, m], 'float32');
    const src = view(be, out);
    const dst = view(be, result);
    const per = ci * m; // one image's share of the channel axis
    for (let y = 0; y < fh; y++)
      for (let z = 0; z < fw; z++) {
        const from = (y * gw + z) * b * per;
        const to = (y * fw + z) * per;
        for (let k = 0; k < per; k++) {
          let s = 0;
          for (let n = 0; n < b; n++) s += src[from + n * per + k]!;
          dst[to + k] = s;
        }
      }
    release(be, out);
    return result;
  };

  /**
   * Stride-1 filter gradient as one XNNPACK fully-connected GEMM per group of images,
   *   dW[(kh,kw,c), co] = sum_q U[(kh,kw,c), q] * D[q, co],
   * over the positions q of a padded grid (Hg x Wg per image) that holds x with its zero padding
   * around it. On that grid, tap (kh, kw) of output q reads input q + kh*Wg + kw: a constant offset,
   * so each row of U is one contiguous slice of one channel plane (a memmove, no per-pixel work),
   * and D is dy placed on the grid (zero at the grid's extra positions). Neighbouring images share
   * their padding rows and columns, so the grid is only (H + p) x (W + p) per image.
   * Compared with the convolution formulation this packs dy 3x faster (the fully-connected
   * operator packs without the filter transpose tfjs does for a convolution) and runs a plain GEMM.
   */
  const filterGradStride1 = (be: WasmBackend, x: TensorInfo, dy: TensorInfo, info: ReturnType<typeof convInfo>): TensorInfo => {
    const { batchSize: b, inHeight: h, inWidth: w, inChannels: ci, outHeight: oh, outWidth: ow, filterHeight: fh, filterWidth: fw, outChannels: co } = info;
    const pt = info.padInfo.top;
    const pl = info.padInfo.left;
    const pbNeed = Math.max(0, oh + fh - 1 - pt - h);
    const prNeed = Math.max(0, ow + fw - 1 - pl - w);
    const wg = w + Math.max(pl, prNeed);
    const hg = h + Math.max(pt, pbNeed);
    const perImage = hg * wg;
    const slack = (fh - 1) * wg + (fw - 1);
    const rows = fh * fw * ci;
    const imagesPerGemm = Math.max(1, Math.min(b, Math.floor(UNFOLD_FLOATS / (rows * perImage))));
    const xT = transpose(be, x, [3, 0, 1, 2]); // [Ci, B, H, W]
    const acc = imagesPerGemm < b ? new Float64Array(rows * co) : null;
    try {
      for (let b0 = 0; b0 < b; b0 += imagesPerGemm) {
        const nb = Math.min(imagesPerGemm, b - b0);
        const g = nb * perImage;
        const plane = g + slack;
        const grid = be.makeOutput([ci, plane], 'float32');
        const unfolded = be.makeOutput([1, rows, g], 'float32');
        const dyGrid = be.makeOutput([1, g, co], 'float32');
        const heap = new Float32Array(be.wasm.HEAPU8.buffer);
        const at = (t: TensorInfo) => be.dataIdMap.get(t.dataId).memoryOffset / 4;
        const xAt = at(xT);
        const gridAt = at(grid);
        // x on the grid: image n, row y, column z at n*Hg*Wg + (y + pt)*Wg + z + pl of its channel's plane.
        heap.fill(0, gridAt, gridAt + ci * plane);
        for (let c = 0; c < ci; c++)
          for (let n = 0; n < nb; n++)
            for (let y = 0; y < h; y++) {
              const from = xAt + ((c * b + b0 + n) * h + y) * w;
              heap.copyWithin(gridAt + c * plane + n * perImage + (y + pt) * wg + pl, from, from + w);
            }
        // U: row (kh, kw, c) is channel c's plane from offset kh*Wg + kw.
        const uAt = at(unfolded);
        for (let kh = 0; kh < fh; kh++)
          for (let kw = 0; kw < fw; kw++)
            for (let c = 0; c < ci; c++) {
              const from = gridAt + c * plane + kh * wg + kw;
              heap.copyWithin(uAt + ((kh * fw + kw) * ci + c) * g, from, from + g);
            }
        // D: dy's row (n, y) of OW pixels at grid position n*Hg*Wg + y*Wg.
        const dAt = at(dyGrid);
        const dyAt = at(dy);
        heap.fill(0, dAt, dAt + g * co);
        for (let n = 0; n < nb; n++)
          for (let y = 0; y < oh; y++) {
            const from = dyAt + ((b0 + n) * oh + y) * ow * co;
            heap.copyWithin(dAt + (n * perImage + y * wg) * co, from, from + ow * co);
          }
        release(be, grid);
        let part: TensorInfo;
        try {
          part = stockBatchMatMul({ inputs: { a: unfolded, b: dyGrid }, backend: be, attrs: { transposeA: false, transposeB: false } }); // [1, rows, Co]
        } finally {
          release(be, unfolded, dyGrid);
        }
        if (!acc) return { ...part, shape: [fh, fw, ci, co] };
        const p = view(be, part);
        for (let i = 0; i < p.length; i++) acc[i] += p[i]!;
        release(be, part);
      }
    } finally {
      release(be, xT);
    }
    const result = be.makeOutput([fh, fw, ci, co], 'float32');
    view(be, result).set(acc!);
    return result;
  };

  /** dx via a forward convolution of the dilated dy with the flipped, channel-swapped kernel. */
  const inputGrad = (be: WasmBackend, dy: TensorInfo, filter: TensorInfo, inputShape: number[], attrs: Record<string, unknown>, depthwise: boolean): TensorInfo | null => {
    const info = convInfo(inputShape, filter.shape, attrs, depthwise);
    const { batchSize: b, inHeight: h, inWidth: w, inChannels: ci, outHeight: oh, outWidth: ow, filterHeight: fh, filterWidth: fw, strideHeight: sh, strideWidth: sw } = info;
    const co = info.outChannels;
    const pt = fh - 1 - info.padInfo.top;
    const pl = fw - 1 - info.padInfo.left;
    const pb = h - 1 - (oh - 1) * sh + info.padInfo.top;
    const pr = w - 1 - (ow - 1) * sw + info.padInfo.left;
    if (pt < 0 || pl < 0 || pb < 0 || pr < 0) return null; // unusual explicit padding: the caller uses the stock kernel
    const dyD = dilate(be, dy, sh, sw);
    const dh = (oh - 1) * sh + 1;
    const dw = (ow - 1) * sw + 1;
    try {
      if (!depthwise) {
        // W'[kh,kw,o,i] = W[FH-1-kh, FW-1-kw, i, o]
        const flipped = be.makeOutput([fh, fw, co, ci], 'float32');
        const src = view(be, filter);
        const dst = view(be, flipped);
        for (let y = 0; y < fh; y++)
          for (let z = 0; z < fw; z++) {
            const from = ((fh - 1 - y) * fw + (fw - 1 - z)) * ci * co;
            const to = (y * fw + z) * co * ci;
            for (let i = 0; i < ci; i++) for (let o = 0; o < co; o++) dst[to + o * ci + i] = src[from + i * co + o]!;
          }
        try {
          return forwardConv(be, dyD, flipped, { batch: b, inHeight: dh, inWidth: dw, inChannels: co, outChannels: ci, filterHeight: fh, filterWidth: fw, padTop: pt, padBottom: pb, padLeft: pl, padRight: pr, strideHeight: 1, strideWidth: 1, dilationHeight: 1, dilationWidth: 1 }, false);
        } finally {
          release(be, flipped);
        }
      }
      // Depthwise: channel c*M + m of dy convolved with the flipped W[:, :, c, m]; then sum over m.
      const m = co / ci;
      const flipped = be.makeOutput([fh, fw, co, 1], 'float32');
      const src = view(be, filter);
      const dst = view(be, flipped);
      for (let y = 0; y < fh; y++)
        for (let z = 0; z < fw; z++) dst.set(src.subarray(((fh - 1 - y) * fw + (fw - 1 - z)) * co, ((fh - 1 - y) * fw + (fw - 1 - z) + 1) * co), (y * fw + z) * co);
      let out: TensorInfo;
      try {
        out = forwardConv(be, dyD, flipped, { batch: b, inHeight: dh, inWidth: dw, inChannels: co, outChannels: co, filterHeight: fh, filterWidth: fw, padTop: pt, padBottom: pb, padLeft: pl, padRight: pr, strideHeight: 1, strideWidth: 1, dilationHeight: 1, dilationWidth: 1 }, true);
      } finally {
        release(be, flipped);
      }
      if (m === 1) return out;
      const result = be.makeOutput([b, h, w, ci], 'float32');
      const s = view(be, out);
      const d = view(be, result);
      for (let p = 0, q = 0; p < d.length; p++) {
        let acc = 0;
        for (let k = 0; k < m; k++) acc += s[q++]!;
        d[p] = acc;
      }
      release(be, out);
      return result;
    } finally {
      if (dyD !== dy) release(be, dyD);
    }
  };

  /**
   * C[M,N] = opA(A)[M,K] opB(B)[K,N] on the stock kernel's fast path: without transposes it is an
   * XNNPACK fully-connected GEMM whose second operand gets packed; with a transpose flag it is a
   * scalar loop. So transpose explicitly, either to rows opA(A) times weights opB(B), or to rows
   * opB(B)^T times weights opA(A)^T and transpose the result; the cheaper in elements moved.
   */
  const matMul2d = (be: WasmBackend, a: TensorInfo, b: TensorInfo, transposeA: boolean, transposeB: boolean): TensorInfo => {
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
      const r = transpose(be, t, [1, 0]);
      temps.push(r);
      return { ...r, shape: [1, rows, cols] };
    };
    const gemm = (rows: TensorInfo, weights: TensorInfo) => stockBatchMatMul({ inputs: { a: rows, b: weights }, backend: be, attrs: { transposeA: false, transposeB: false } });
    try {
      if (direct <= swapped) return gemm(mat(a2, transposeA, m, k), mat(b2, transposeB, k, n));
      const outT = gemm(mat(b2, !transposeB, n, k), mat(a2, !transposeA, k, m)); // [1, N, M]
      temps.push(outT);
      const out = transpose(be, { ...outT, shape: [n, m] }, [1, 0]);
      return { ...out, shape: [1, m, n] };
    } finally {
      release(be, ...temps);
    }
  };

  const replace = (kernelName: string, kernelFunc: KernelFunc) => {
    if (tf.getKernel(kernelName, 'wasm')) tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as never });
  };
  replace('Conv2DBackpropFilter', ({ inputs, backend, attrs }) => filterGrad(backend, inputs.x!, inputs.dy!, attrs.filterShape as number[], attrs, false));
  replace('Conv2DBackpropInput', (args) => {
    const { inputs, backend, attrs } = args;
    return inputGrad(backend, inputs.dy!, inputs.filter!, attrs.inputShape as number[], attrs, false) ?? stockBackpropInput(args);
  });
  replace('DepthwiseConv2dNativeBackpropFilter', ({ inputs, backend, attrs }) => filterGrad(backend, inputs.x!, inputs.dy!, attrs.filterShape as number[], attrs, true));
  replace('DepthwiseConv2dNativeBackpropInput', ({ inputs, backend, attrs }) => {
    const dx = inputGrad(backend, inputs.dy!, inputs.filter!, attrs.inputShape as number[], attrs, true);
    if (!dx) throw new Error('depthwise convolution gradient: explicit padding larger than the filter is not supported on the wasm backend');
    return dx;
  });
  replace('MaxPoolGrad', ({ inputs, backend, attrs }) => {
    const x = inputs.input!;
    const info = tf.backend_util.computePool2DInfo(x.shape as [number, number, number, number], attrs.filterSize as number, attrs.strides as number, 1, attrs.pad as 'same', attrs.dimRoundingMode as 'floor' | undefined);
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
  replace('Sum', (args) => {
    const { inputs, backend, attrs } = args;
    const x = inputs.x!;
    const rank = x.shape.length;
    const axes = tf.util.parseAxisParam(attrs.axis as number | number[], x.shape).sort((p, q) => p - q);
    const leading = axes.length > 0 && axes.length < rank && axes.every((v, i) => v === i);
    if (x.dtype !== 'float32' || !leading) return stockSum(args);
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
  });
  replace('BatchMatMul', (args) => {
    const { inputs, backend, attrs } = args;
    const a = inputs.a!;
    const b = inputs.b!;
    const batchOf = (t: TensorInfo) => t.shape.slice(0, -2).reduce((p, q) => p * q, 1);
    if (a.dtype !== 'float32' || b.dtype !== 'float32' || batchOf(a) !== 1 || batchOf(b) !== 1 || a.shape.length < 2 || b.shape.length < 2) return stockBatchMatMul(args);
    const out = matMul2d(backend, a, b, Boolean(attrs.transposeA), Boolean(attrs.transposeB));
    const rank = Math.max(a.shape.length, b.shape.length);
    return { ...out, shape: [...new Array<number>(rank - 2).fill(1), out.shape[1]!, out.shape[2]!] };
  });
  replace('Identity', (args) => {
    const x = args.inputs.x!;
    if (x.dtype === 'string') return stockIdentity(args);
    args.backend.incRef(x.dataId);
    return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
  });
  installedFor = tf;
}

