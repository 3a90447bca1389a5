import type { Tf } from './backend.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * What the wasm training kernels (training/wasm-kernels.ts) share: the parts of
 * tfjs-backend-wasm they use, tensor views on the wasm heap, the XNNPACK forward convolution, and
 * the stock kernels captured before any is replaced.
 */

type DataId = object;
export interface TensorInfo {
  dataId: DataId;
  shape: number[];
  dtype: string;
}

interface WasmModule {
  cwrap(name: string, ret: null, args: string[]): (...args: number[]) => void;
  HEAPU8: Uint8Array;
}

/** The parts of tfjs-backend-wasm's BackendWasm these kernels use. */
export interface WasmBackend {
  wasm: WasmModule;
  dataIdMap: { get(dataId: DataId): { id: number; memoryOffset: number } };
  makeOutput(shape: number[], dtype: 'float32'): TensorInfo;
  disposeData(dataId: DataId, force?: boolean): boolean;
  incRef(dataId: DataId): void;
}

export type KernelFunc = (args: { inputs: Record<string, TensorInfo>; backend: WasmBackend; attrs: Record<string, unknown> }) => TensorInfo;

export interface ConvCall {
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
function convOutSize(inSize: number, padBefore: number, padAfter: number, filter: number, stride: number, dilation: number): number {
  const effective = (filter - 1) * dilation + 1;
  return Math.floor((inSize + padBefore + padAfter - effective) / stride) + 1;
}

const wrapped = new WeakMap<WasmModule, { conv2d: (...a: number[]) => void; depthwise: (...a: number[]) => void }>();
function fns(be: WasmBackend) {
  let f = wrapped.get(be.wasm);
  if (!f) {
    const args = new Array<string>(19).fill('number');
    f = { conv2d: be.wasm.cwrap('Conv2D', null, args), depthwise: be.wasm.cwrap('DepthwiseConv2dNative', null, args) };
    wrapped.set(be.wasm, f);
  }
  return f;
}

export function release(be: WasmBackend, ...infos: TensorInfo[]): void {
  for (const t of infos) be.disposeData(t.dataId);
}

/** A float32 view of a tensor's bytes on the wasm heap; take it after the last allocation (the heap may grow and move). */
export function view(be: WasmBackend, t: TensorInfo): Float32Array {
  return new Float32Array(
    be.wasm.HEAPU8.buffer,
    be.dataIdMap.get(t.dataId).memoryOffset,
    t.shape.reduce((a, b) => a * b, 1),
  );
}

/** XNNPACK forward convolution (regular or depthwise) with explicit padding; returns a new NHWC tensor. */
export function forwardConv(be: WasmBackend, x: TensorInfo, filter: TensorInfo, c: ConvCall, depthwise: boolean): TensorInfo {
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
}

/** Images b0 .. b0+n-1 of an NHWC tensor, as a tensor of their own (one copy of contiguous memory). */
export function slab(be: WasmBackend, t: TensorInfo, b0: number, n: number): TensorInfo {
  const per = t.shape.slice(1).reduce((p, q) => p * q, 1);
  const out = be.makeOutput([n, ...t.shape.slice(1)], 'float32');
  view(be, out).set(view(be, t).subarray(b0 * per, (b0 + n) * per));
  return out;
}

/** dy [B,OH,OW,K] with (s-1) zeros between rows and columns: [B,(OH-1)*sh+1,(OW-1)*sw+1,K]. */
export function dilate(be: WasmBackend, dy: TensorInfo, sh: number, sw: number): TensorInfo {
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
}

/** tfjs's convolution geometry (NHWC, no dilation: what the gradients below support). */
export type ConvInfo = ReturnType<Tf['backend_util']['computeConv2DInfo']>;

/** The stock kernels the replacements fall back on or build on, taken before any is replaced. */
export class WasmOps {
  readonly stockTranspose: KernelFunc;
  readonly stockBackpropInput: KernelFunc;
  readonly stockSum: KernelFunc;
  readonly stockBatchMatMul: KernelFunc;
  readonly stockIdentity: KernelFunc;

  constructor(readonly tf: Tf) {
    this.stockTranspose = this.kernel('Transpose');
    this.stockBackpropInput = this.kernel('Conv2DBackpropInput');
    this.stockSum = this.kernel('Sum');
    this.stockBatchMatMul = this.kernel('BatchMatMul');
    this.stockIdentity = this.kernel('Identity');
  }

  private kernel(name: string): KernelFunc {
    const k = this.tf.getKernel(name, 'wasm');
    if (!k)
      throw new FedlineError(ErrorCodes.BACKEND, `the wasm backend has no ${name} kernel (is @tensorflow/tfjs-backend-wasm 4.22 loaded?)`, { kernel: name });
    return k.kernelFunc as unknown as KernelFunc;
  }

  transpose(be: WasmBackend, x: TensorInfo, perm: number[]): TensorInfo {
    return this.stockTranspose({ inputs: { x }, backend: be, attrs: { perm } });
  }

  convInfo(xShape: number[], filterShape: number[], attrs: Record<string, unknown>, depthwise: boolean): ConvInfo {
    const dataFormat = attrs.dataFormat === 'NCHW' ? 'channelsFirst' : 'channelsLast';
    if (dataFormat !== 'channelsLast') throw new FedlineError(ErrorCodes.BACKEND, 'the wasm backend trains NHWC (channelsLast) convolutions only');
    const info = this.tf.backend_util.computeConv2DInfo(
      xShape as [number, number, number, number],
      filterShape as [number, number, number, number],
      attrs.strides as [number, number],
      (attrs.dilations as [number, number] | undefined) ?? 1,
      attrs.pad as 'same',
      attrs.dimRoundingMode as 'floor' | undefined,
      depthwise,
      dataFormat,
    );
    if (info.dilationHeight !== 1 || info.dilationWidth !== 1)
      throw new FedlineError(ErrorCodes.BACKEND, 'convolution gradients with dilation > 1 are not supported (nor by tfjs itself)');
    return info;
  }
}
