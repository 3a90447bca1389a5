import type { Tf } from './backend.js';

/**
 * A faster Conv2DBackpropFilter for the pure-JavaScript `cpu` backend. tfjs 4.22's own reads
 * every element through TensorBuffer.get() in a loop order that strides through memory; it takes
 * ~90% of a small CNN's training step. This one walks the output gradient once, in memory order,
 * with the output-channel loop innermost over contiguous memory, and accumulates in float64.
 *
 *   dW[kh, kw, ci, co] = sum_{b, oh, ow} x[b, oh*sh + kh - pt, ow*sw + kw - pl, ci] * dy[b, oh, ow, co]
 *
 * Only NHWC (channelsLast) is handled here; other layouts go to the original kernel.
 *
 * Likewise MaxPoolGrad: the stock kernel recomputes the arg-max positions through TensorBuffer
 * and then scans every input pixel against every window; this one finds each window's first
 * maximum (the same tie rule as tfjs: strictly greater wins) and adds dy there, once.
 */

type KernelArgs = {
  inputs: { x: TensorInfo; dy: TensorInfo };
  backend: { data: { get(id: unknown): { values: Float32Array } }; makeTensorInfo(shape: number[], dtype: string, values: Float32Array): TensorInfo };
  attrs: {
    strides: number | [number, number];
    pad: unknown;
    dataFormat: 'NHWC' | 'NCHW';
    dimRoundingMode?: string;
    filterShape: [number, number, number, number];
  };
};
type TensorInfo = { dataId: unknown; shape: number[]; dtype: string };

let installed = false;

export function conv2dBackpropFilterNhwc(
  x: Float32Array,
  dy: Float32Array,
  info: {
    batchSize: number;
    inHeight: number;
    inWidth: number;
    inChannels: number;
    outHeight: number;
    outWidth: number;
    outChannels: number;
    filterHeight: number;
    filterWidth: number;
    strideHeight: number;
    strideWidth: number;
    padTop: number;
    padLeft: number;
  },
): Float32Array {
  const {
    batchSize,
    inHeight,
    inWidth,
    inChannels: ci,
    outHeight,
    outWidth,
    outChannels: co,
    filterHeight: fh,
    filterWidth: fw,
    strideHeight: sh,
    strideWidth: sw,
    padTop,
    padLeft,
  } = info;
  const acc = new Float64Array(fh * fw * ci * co);
  for (let b = 0; b < batchSize; b++) {
    for (let oh = 0; oh < outHeight; oh++) {
      for (let ow = 0; ow < outWidth; ow++) {
        const dyBase = ((b * outHeight + oh) * outWidth + ow) * co;
        for (let kh = 0; kh < fh; kh++) {
          const ih = oh * sh + kh - padTop;
          if (ih < 0 || ih >= inHeight) continue;
          for (let kw = 0; kw < fw; kw++) {
            const iw = ow * sw + kw - padLeft;
            if (iw < 0 || iw >= inWidth) continue;
            const xBase = ((b * inHeight + ih) * inWidth + iw) * ci;
            const wBase = (kh * fw + kw) * ci * co;
            for (let c = 0; c < ci; c++) {
              const xv = x[xBase + c]!;
              if (xv === 0) continue; // ReLU outputs are often zero
              const w = wBase + c * co;
              for (let o = 0; o < co; o++) acc[w + o] += xv * dy[dyBase + o]!;
            }
          }
        }
      }
    }
  }
  return Float32Array.from(acc);
}

/** The geometry maxPoolGradNhwc needs, from tfjs' Pool2DInfo (shared by the cpu and wasm kernels). */
export function poolGradGeometry(info: {
  batchSize: number;
  inHeight: number;
  inWidth: number;
  inChannels: number;
  outHeight: number;
  outWidth: number;
  filterHeight: number;
  filterWidth: number;
  strideHeight: number;
  strideWidth: number;
  padInfo: { top: number; left: number };
}) {
  return {
    batchSize: info.batchSize,
    inHeight: info.inHeight,
    inWidth: info.inWidth,
    channels: info.inChannels,
    outHeight: info.outHeight,
    outWidth: info.outWidth,
    filterHeight: info.filterHeight,
    filterWidth: info.filterWidth,
    strideHeight: info.strideHeight,
    strideWidth: info.strideWidth,
    padTop: info.padInfo.top,
    padLeft: info.padInfo.left,
  };
}

export function maxPoolGradNhwc(
  x: Float32Array,
  dy: Float32Array,
  info: {
    batchSize: number;
    inHeight: number;
    inWidth: number;
    channels: number;
    outHeight: number;
    outWidth: number;
    filterHeight: number;
    filterWidth: number;
    strideHeight: number;
    strideWidth: number;
    padTop: number;
    padLeft: number;
  },
  /** Where to write dx (zeroed here); a new array when absent. */
  out?: Float32Array,
  /** The forward pass's output (each window's maximum), when at hand: it speeds up the common 2x2 case. */
  pooled?: Float32Array,
): Float32Array {
  const {
    batchSize,
    inHeight,
    inWidth,
    channels: ch,
    outHeight,
    outWidth,
    filterHeight: fh,
    filterWidth: fw,
    strideHeight: sh,
    strideWidth: sw,
    padTop,
    padLeft,
  } = info;
  if (
    pooled &&
    pooled.length === dy.length &&
    fh === 2 &&
    fw === 2 &&
    sh === 2 &&
    sw === 2 &&
    padTop === 0 &&
    padLeft === 0 &&
    inHeight === 2 * outHeight &&
    inWidth === 2 * outWidth
  ) {
    return maxPoolGrad2x2(x, dy, pooled, batchSize, outHeight, outWidth, ch, out ?? new Float32Array(batchSize * inHeight * inWidth * ch));
  }
  const dx = out ? out.fill(0) : new Float32Array(batchSize * inHeight * inWidth * ch);
  for (let b = 0; b < batchSize; b++) {
    const xb = b * inHeight * inWidth * ch;
    for (let oh = 0; oh < outHeight; oh++) {
      const h0 = Math.max(0, oh * sh - padTop);
      const h1 = Math.min(inHeight, oh * sh - padTop + fh);
      for (let ow = 0; ow < outWidth; ow++) {
        const w0 = Math.max(0, ow * sw - padLeft);
        const w1 = Math.min(inWidth, ow * sw - padLeft + fw);
        const dyBase = ((b * outHeight + oh) * outWidth + ow) * ch;
        for (let c = 0; c < ch; c++) {
          let best = Number.NEGATIVE_INFINITY;
          let at = -1;
          for (let h = h0; h < h1; h++) {
            for (let w = w0; w < w1; w++) {
              const i = xb + (h * inWidth + w) * ch + c;
              const v = x[i]!;
              if (v > best) {
                best = v;
                at = i;
              }
            }
          }
          if (at >= 0) dx[at] += dy[dyBase + c]!;
        }
      }
    }
  }
  return dx;
}

/**
 * The common 2x2, stride 2 pooling of an even-sized input: every input pixel is in exactly one
 * window, so each window writes its four dx values (dy at the first maximum, zeros elsewhere) and
 * nothing needs clearing first. One pass, in memory order, comparing with the forward output
 * (the window's maximum, one of its four values) instead of recomputing it: Math.max made this
 * loop 9x slower.
 */
function maxPoolGrad2x2(
  x: Float32Array,
  dy: Float32Array,
  pooled: Float32Array,
  batchSize: number,
  outHeight: number,
  outWidth: number,
  ch: number,
  dx: Float32Array,
): Float32Array {
  const rowStride = 2 * outWidth * ch;
  let o = 0;
  for (let b = 0; b < batchSize; b++) {
    for (let oh = 0; oh < outHeight; oh++) {
      let i00 = (b * 2 * outHeight + 2 * oh) * rowStride;
      for (let ow = 0; ow < outWidth; ow++) {
        for (let c = 0; c < ch; c++, i00++, o++) {
          const i01 = i00 + ch;
          const i10 = i00 + rowStride;
          const i11 = i10 + ch;
          // The first maximum in row-major window order gets dy (tfjs' rule; ReLU zeros tie often).
          // Branch-free: with data-dependent branches this loop was 3x slower.
          const best = pooled[o]!;
          const e00 = +(x[i00]! === best);
          const e01 = +(x[i01]! === best) & (e00 ^ 1);
          const e10 = +(x[i10]! === best) & ((e00 | e01) ^ 1);
          const e11 = (e00 | e01 | e10) ^ 1;
          const g = dy[o]!;
          // + 0 turns the -0 of a negative g times 0 into 0, as the general path writes.
          dx[i00] = g * e00 + 0;
          dx[i01] = g * e01 + 0;
          dx[i10] = g * e10 + 0;
          dx[i11] = g * e11 + 0;
        }
        i00 += ch; // skip the window's second column
      }
    }
  }
  return dx;
}

/** Replace the cpu backend's Conv2DBackpropFilter and MaxPoolGrad (idempotent). */
export function installFastCpuKernels(tf: Tf): void {
  if (installed) return;
  const original = tf.getKernel('Conv2DBackpropFilter', 'cpu');
  if (!original) return;
  installed = true;
  tf.unregisterKernel('Conv2DBackpropFilter', 'cpu');
  tf.registerKernel({
    kernelName: 'Conv2DBackpropFilter',
    backendName: 'cpu',
    kernelFunc: ((args: KernelArgs) => {
      const { inputs, backend, attrs } = args;
      if (attrs.dataFormat !== 'NHWC') return original.kernelFunc(args as never);
      const { x, dy } = inputs;
      const conv = tf.backend_util.computeConv2DInfo(
        x.shape as [number, number, number, number],
        attrs.filterShape,
        attrs.strides,
        1,
        attrs.pad as never,
        attrs.dimRoundingMode as never,
        false,
        'channelsLast',
      );
      const values = conv2dBackpropFilterNhwc(backend.data.get(x.dataId).values, backend.data.get(dy.dataId).values, {
        batchSize: conv.batchSize,
        inHeight: conv.inHeight,
        inWidth: conv.inWidth,
        inChannels: conv.inChannels,
        outHeight: conv.outHeight,
        outWidth: conv.outWidth,
        outChannels: conv.outChannels,
        filterHeight: conv.filterHeight,
        filterWidth: conv.filterWidth,
        strideHeight: conv.strideHeight,
        strideWidth: conv.strideWidth,
        padTop: conv.padInfo.top,
        padLeft: conv.padInfo.left,
      });
      return backend.makeTensorInfo([...conv.filterShape], 'float32', values);
    }) as never,
  });
  const originalPool = tf.getKernel('MaxPoolGrad', 'cpu');
  if (!originalPool) return;
  tf.unregisterKernel('MaxPoolGrad', 'cpu');
  tf.registerKernel({
    kernelName: 'MaxPoolGrad',
    backendName: 'cpu',
    kernelFunc: ((args: {
      inputs: { dy: TensorInfo; input: TensorInfo; output: TensorInfo };
      backend: KernelArgs['backend'];
      attrs: { filterSize: number | [number, number]; strides: number | [number, number]; pad: unknown; dimRoundingMode?: string };
    }) => {
      const { inputs, backend, attrs } = args;
      const x = inputs.input;
      const info = tf.backend_util.computePool2DInfo(
        x.shape as [number, number, number, number],
        attrs.filterSize,
        attrs.strides,
        1,
        attrs.pad as never,
        attrs.dimRoundingMode as never,
      );
      if (info.dilationHeight !== 1 || info.dilationWidth !== 1) return originalPool.kernelFunc(args as never);
      const values = maxPoolGradNhwc(
        backend.data.get(x.dataId).values,
        backend.data.get(inputs.dy.dataId).values,
        poolGradGeometry(info),
        undefined,
        inputs.output ? backend.data.get(inputs.output.dataId).values : undefined,
      );
      return backend.makeTensorInfo([...x.shape], 'float32', values);
    }) as never,
  });
}
