import type { BundleSource } from './bundle-source.js';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import { decodeValues, DEFAULT_Q8_BLOCK, dtypeOf, encodedBytes, encodeValues, unitOf, type UpdateEncoding, type ValueDtype } from './value-encodings.js';
import { elementCount, encodeBundlePrefix, layoutTensors, type NamedTensor, type TensorSpec } from './tensor-bundle.js';

/**
 * An update bundle encoded on the fly: the header is built up front, the payload bytes of any
 * range are computed when the chunk publisher asks for them. Sending a 557 MB update thus needs no
 * second copy of the weights, and f16 / q8 / delta encoding runs chunk by chunk while earlier
 * chunks are on the wire. The same range always gives the same bytes, so resent chunks match.
 */

/** Where an update's float32 values come from: a tensor in memory, or generated (benchmarks). */
export interface TensorValues {
  name: string;
  shape: number[];
  /** Copy values [start, start + out.length) into `out`. */
  read(start: number, out: Float32Array): void;
  /** The values as raw little-endian bytes, when they are in memory (lets f32 skip a copy). */
  bytes?: Uint8Array;
}

export function tensorValues(t: NamedTensor): TensorValues {
  return {
    name: t.name,
    shape: t.shape,
    read: (start, out) => out.set(t.data.subarray(start, start + out.length)),
    bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
  };
}

export interface UpdateEncodingOptions {
  encoding: UpdateEncoding;
  /** Send the difference to the round's base model (`base` must hold every tensor). */
  delta: boolean;
  base?: ReadonlyMap<string, Float32Array>;
  /** Values per q8 block. Default 256. */
  block?: number;
}

export interface EncodedUpdate extends BundleSource {
  readonly specs: readonly TensorSpec[];
  readonly payloadStart: number;
  readonly dtype: ValueDtype;
}

interface Part {
  spec: TensorSpec;
  values: TensorValues;
  base: Float32Array | null;
  start: number;
  end: number;
  count: number;
}

export function encodeUpdateSource(tensors: readonly TensorValues[], meta: unknown, options: UpdateEncodingOptions): EncodedUpdate {
  const dtype = dtypeOf(options.encoding);
  const block = options.block ?? DEFAULT_Q8_BLOCK;
  const { specs, payloadBytes } = layoutTensors(tensors.map((t) => ({ name: t.name, shape: t.shape, dtype, ...(dtype === 'q8' ? { block } : {}) })));
  const prefix = encodeBundlePrefix(specs, meta);
  const payloadStart = prefix.byteLength;
  const parts: Part[] = specs.map((spec, i) => {
    const values = tensors[i]!;
    let base: Float32Array | null = null;
    if (options.delta) {
      base = options.base?.get(spec.name) ?? null;
      if (!base) throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `delta encoding needs the base model's tensor "${spec.name}"`, { tensor: spec.name });
      if (base.length !== elementCount(spec.shape)) {
        throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `base tensor "${spec.name}" has ${base.length} values, the update ${elementCount(spec.shape)}`, {
          tensor: spec.name,
        });
      }
    }
    const start = payloadStart + spec.offset;
    return { spec, values, base, start, end: start + spec.bytes, count: elementCount(spec.shape) };
  });
  const byteLength = payloadStart + payloadBytes;
  const { unitValues, unitBytes } = unitOf(dtype, block);
  let valueScratch = new Float32Array(0);
  let byteScratch = new Uint8Array(0);

  /** Encode the bytes [from, to) of one tensor (offsets relative to the tensor) into out. */
  const encodePart = (part: Part, from: number, to: number, out: Uint8Array): void => {
    if (dtype === 'float32' && !part.base) {
      if (part.values.bytes) {
        out.set(part.values.bytes.subarray(from, to));
        return;
      }
      if (out.byteOffset % 4 === 0 && from % 4 === 0 && to % 4 === 0) {
        // Straight into the message: one copy, as from a tensor in memory.
        part.values.read(from / 4, new Float32Array(out.buffer, out.byteOffset, (to - from) / 4));
        return;
      }
    }
    const firstUnit = Math.floor(from / unitBytes);
    const lastUnit = Math.ceil(to / unitBytes); // exclusive; the last unit of a tensor may be short
    const v0 = firstUnit * unitValues;
    const v1 = Math.min(part.count, lastUnit * unitValues);
    const n = v1 - v0;
    if (valueScratch.length < n) valueScratch = new Float32Array(n);
    const values = valueScratch.subarray(0, n);
    part.values.read(v0, values);
    if (part.base) {
      const base = part.base;
      // Math.fround: the difference is what a float32 subtraction gives, on every platform.
      for (let i = 0; i < n; i++) values[i] = Math.fround(values[i]! - base[v0 + i]!);
    }
    const need = (lastUnit - firstUnit) * unitBytes;
    if (byteScratch.length < need) byteScratch = new Uint8Array(need);
    const written = encodeValues(dtype, values, byteScratch, block);
    const skip = from - firstUnit * unitBytes;
    out.set(byteScratch.subarray(skip, Math.min(written, skip + (to - from))));
  };

  return {
    byteLength,
    specs,
    payloadStart,
    dtype,
    read(offset: number, out: Uint8Array): void {
      if (offset < 0 || offset + out.byteLength > byteLength)
        throw new RangeError(`read of ${out.byteLength} bytes at ${offset} is outside ${byteLength} bytes`);
      let pos = offset;
      const end = offset + out.byteLength;
      let p = 0;
      while (pos < end) {
        if (pos < payloadStart) {
          const n = Math.min(end, payloadStart) - pos;
          out.set(prefix.subarray(pos, pos + n), pos - offset);
          pos += n;
          continue;
        }
        while (p < parts.length && parts[p]!.end <= pos) p++;
        const part = parts[p];
        if (!part || pos < part.start) {
          // zero padding between tensors (4-byte alignment) or after the last one
          const n = Math.min(end, part ? part.start : byteLength) - pos;
          out.fill(0, pos - offset, pos - offset + n);
          pos += n;
          continue;
        }
        const n = Math.min(end, part.end) - pos;
        encodePart(part, pos - part.start, pos - part.start + n, out.subarray(pos - offset, pos - offset + n));
        pos += n;
      }
    },
  };
}

/**
 * A tensor's values as the aggregator reads them back from an update made with these options
 * (encoded, decoded, and with `delta` the base added back in float32, as aggregator/update-spool.ts
 * does): f32 without delta gives the values themselves. SCAFFOLD's agents form c_i+ from these, so
 * that it matches the Δc_i the aggregator forms from the same update.
 */
export function valuesAsReceived(
  values: Float32Array,
  base: Float32Array | null,
  encoding: UpdateEncoding,
  delta: boolean,
  block = DEFAULT_Q8_BLOCK,
): Float32Array {
  const dtype = dtypeOf(encoding);
  if (dtype === 'float32' && !delta) return values;
  if (delta && (!base || base.length !== values.length)) throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, 'delta encoding needs the base tensor');
  const sent = delta ? values.map((v, i) => Math.fround(v - base![i]!)) : values;
  const bytes = new Uint8Array(encodedBytes(dtype, sent.length, block));
  encodeValues(dtype, sent, bytes, block);
  const out = new Float32Array(sent.length);
  decodeValues(dtype, bytes, sent.length, out, block);
  if (delta) for (let i = 0; i < out.length; i++) out[i] = out[i]! + base![i]!;
  return out;
}
