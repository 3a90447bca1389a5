import { dilate, forwardConv, release, view, type ConvCall, type TensorInfo, type WasmBackend, type WasmOps } from './wasm-kernel-ops.js';

/**
 * The input gradient of a convolution on the wasm backend: dx = dilate(dy, s) convolved with the
 * kernel flipped in space and with in/out channels swapped (training/wasm-kernels.ts), by the
 * XNNPACK forward convolution.
 */

/** dx via a forward convolution of the dilated dy with the flipped, channel-swapped kernel; null: padding this cannot express. */
export function inputGrad(
  ops: WasmOps,
  be: WasmBackend,
  dy: TensorInfo,
  filter: TensorInfo,
  inputShape: number[],
  attrs: Record<string, unknown>,
  depthwise: boolean,
): TensorInfo | null {
  const info = ops.convInfo(inputShape, filter.shape, attrs, depthwise);
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
  const co = info.outChannels;
  const pt = fh - 1 - info.padInfo.top;
  const pl = fw - 1 - info.padInfo.left;
  const pb = h - 1 - (oh - 1) * sh + info.padInfo.top;
  const pr = w - 1 - (ow - 1) * sw + info.padInfo.left;
  if (pt < 0 || pl < 0 || pb < 0 || pr < 0) return null; // unusual explicit padding: the caller uses the stock kernel
  const dyD = dilate(be, dy, sh, sw);
  const dh = (oh - 1) * sh + 1;
  const dw = (ow - 1) * sw + 1;
  // The forward convolution over the dilated dy; channels are set per case below.
  const conv: ConvCall = {
    batch: b,
    inHeight: dh,
    inWidth: dw,
    inChannels: co,
    outChannels: ci,
    filterHeight: fh,
    filterWidth: fw,
    padTop: pt,
    padBottom: pb,
    padLeft: pl,
    padRight: pr,
    strideHeight: 1,
    strideWidth: 1,
    dilationHeight: 1,
    dilationWidth: 1,
  };
  try {
    if (!depthwise) return inputGradRegular(be, dyD, filter, conv);
    return inputGradDepthwise(be, dyD, filter, { ...conv, outChannels: co }, [b, h, w, ci]);
  } finally {
    if (dyD !== dy) release(be, dyD);
  }
}

/** Regular convolution: one forward convolution with W'[kh,kw,o,i] = W[FH-1-kh, FW-1-kw, i, o]. */
function inputGradRegular(be: WasmBackend, dyD: TensorInfo, filter: TensorInfo, conv: ConvCall): TensorInfo {
  const { filterHeight: fh, filterWidth: fw, inChannels: co, outChannels: ci } = conv;
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
    return forwardConv(be, dyD, flipped, conv, false);
  } finally {
    release(be, flipped);
  }
}

/** Depthwise: channel c*M + m of dy convolved with the flipped W[:, :, c, m]; then sum over m. */
function inputGradDepthwise(be: WasmBackend, dyD: TensorInfo, filter: TensorInfo, conv: ConvCall, dxShape: [number, number, number, number]): TensorInfo {
  const { filterHeight: fh, filterWidth: fw, inChannels: co } = conv;
  const [b, h, w, ci] = dxShape;
  const m = co / ci;
  const flipped = be.makeOutput([fh, fw, co, 1], 'float32');
  const src = view(be, filter);
  const dst = view(be, flipped);
  for (let y = 0; y < fh; y++)
    for (let z = 0; z < fw; z++) dst.set(src.subarray(((fh - 1 - y) * fw + (fw - 1 - z)) * co, ((fh - 1 - y) * fw + (fw - 1 - z) + 1) * co), (y * fw + z) * co);
  let out: TensorInfo;
  try {
    out = forwardConv(be, dyD, flipped, conv, true);
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
}
