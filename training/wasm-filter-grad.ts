import { forwardConv, release, slab, view, type ConvInfo, type TensorInfo, type WasmBackend, type WasmOps } from './wasm-kernel-ops.js';

/**
 * The filter gradient of a convolution on the wasm backend (see training/wasm-kernels.ts for the
 * identities): stride 1 as one XNNPACK GEMM per group of images, other strides and depthwise
 * convolutions as an XNNPACK forward convolution over the batch.
 */

/** Largest kernel (floats) of one filter-gradient convolution; bigger ones are split by images. */
const FILTER_GRAD_KERNEL_FLOATS = 256 * 1024;

/** Largest unfolded input (floats) of one stride-1 filter-gradient GEMM; bigger batches are split by images. 16M floats = 64 MiB. */
const UNFOLD_FLOATS = 16 * 1024 * 1024;

/** dW via a forward convolution over the batch (see the file comment); depthwise sums the batch out at the end. */
export function filterGrad(
  ops: WasmOps,
  be: WasmBackend,
  x: TensorInfo,
  dy: TensorInfo,
  filterShape: number[],
  attrs: Record<string, unknown>,
  depthwise: boolean,
): TensorInfo {
  const info = ops.convInfo(x.shape, filterShape, attrs, depthwise);
  if (!depthwise && info.strideHeight === 1 && info.strideWidth === 1) {
    return filterGradStride1(ops, be, x, dy, info);
  }
  return depthwise ? filterGradDepthwise(ops, be, x, dy, info) : filterGradStrided(ops, be, x, dy, info);
}

/** Rows/columns of padding after the input so that the output covers the whole filter. */
function padAfter(info: ConvInfo): { pb: number; pr: number } {
  const { inHeight: h, inWidth: w, outHeight: oh, outWidth: ow, filterHeight: fh, filterWidth: fw, strideHeight: sh, strideWidth: sw } = info;
  return { pb: Math.max(0, fh + (oh - 1) * sh - h - info.padInfo.top), pr: Math.max(0, fw + (ow - 1) * sw - w - info.padInfo.left) };
}

/** Regular convolution, any stride: a forward convolution whose batch is Ci, whose input channels are the images and whose kernel is dy. */
function filterGradStrided(ops: WasmOps, be: WasmBackend, x: TensorInfo, dy: TensorInfo, info: ConvInfo): TensorInfo {
  const {
    batchSize: b,
    inHeight: h,
    inWidth: w,
    inChannels: ci,
    outHeight: oh,
    outWidth: ow,
    filterHeight: fh,
    filterWidth: fw,
    strideHeight: sh,
    strideWidth: sw,
  } = info;
  const pt = info.padInfo.top;
  const pl = info.padInfo.left;
  const { pb, pr } = padAfter(info);
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
    const xT = ops.transpose(be, xs, [3, 1, 2, 0]); // [Ci, H, W, n]
    const dyT = ops.transpose(be, dys, [1, 2, 0, 3]); // [OH, OW, n, Co]
    if (xs !== x) release(be, xs, dys);
    let out: TensorInfo;
    try {
      out = forwardConv(
        be,
        xT,
        dyT,
        {
          batch: ci,
          inHeight: h,
          inWidth: w,
          inChannels: n,
          outChannels: co,
          filterHeight: oh,
          filterWidth: ow,
          padTop: pt,
          padBottom: pb,
          padLeft: pl,
          padRight: pr,
          strideHeight: 1,
          strideWidth: 1,
          dilationHeight: sh,
          dilationWidth: sw,
        },
        false,
      );
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

/** Depthwise: the batch becomes part of the channel axis (channel b*C + c) and is summed out afterwards. */
function filterGradDepthwise(ops: WasmOps, be: WasmBackend, x: TensorInfo, dy: TensorInfo, info: ConvInfo): TensorInfo {
  const {
    batchSize: b,
    inHeight: h,
    inWidth: w,
    inChannels: ci,
    outHeight: oh,
    outWidth: ow,
    filterHeight: fh,
    filterWidth: fw,
    strideHeight: sh,
    strideWidth: sw,
  } = info;
  const pt = info.padInfo.top;
  const pl = info.padInfo.left;
  const { pb, pr } = padAfter(info);
  // Depthwise: channel k = b*C + c of a 1-image batch, kernel dy[b, :, :, c*M + m].
  const m = info.outChannels / ci;
  const xT = ops.transpose(be, x, [1, 2, 0, 3]); // [H, W, B, C] = [1, H, W, B*C]
  const dy5 = { ...dy, shape: [b, oh, ow, ci, m] };
  const dyT = ops.transpose(be, dy5, [1, 2, 0, 3, 4]); // [OH, OW, B, C, M] = [OH, OW, B*C, M]
  let out: TensorInfo;
  try {
    out = forwardConv(
      be,
      xT,
      dyT,
      {
        batch: 1,
        inHeight: h,
        inWidth: w,
        inChannels: b * ci,
        outChannels: b * ci * m,
        filterHeight: oh,
        filterWidth: ow,
        padTop: pt,
        padBottom: pb,
        padLeft: pl,
        padRight: pr,
        strideHeight: 1,
        strideWidth: 1,
        dilationHeight: sh,
        dilationWidth: sw,
      },
      true,
    );
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
}

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
function filterGradStride1(ops: WasmOps, be: WasmBackend, x: TensorInfo, dy: TensorInfo, info: ConvInfo): TensorInfo {
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
  const xT = ops.transpose(be, x, [3, 0, 1, 2]); // [Ci, B, H, W]
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
        part = ops.stockBatchMatMul({ inputs: { a: unfolded, b: dyGrid }, backend: be, attrs: { transposeA: false, transposeB: false } }); // [1, rows, Co]
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
}
