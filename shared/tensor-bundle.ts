import { createHash } from 'node:crypto';
import { endianness } from 'node:os';
import { z } from 'zod';
import { packMsg, unpackMsg, formatIssues } from './codec.js';
import { ErrorCodes, FedlineError } from './errors.js';

/**
 * A tensor bundle is how weights travel and rest: a small msgpack header (tensor manifest plus
 * free-form meta) followed by the raw little-endian tensor bytes.
 *
 *   bytes 0..3   magic "FLB1"
 *   bytes 4..7   header length H, uint32 little-endian
 *   bytes 8..    header, msgpack map {v, tensors: [{name, shape, dtype, offset, bytes}], meta}
 *   then zero padding up to a multiple of 8, then the payload: the tensors back to back in
 *   manifest order, offsets relative to the payload start. With float32 tensors the payload is
 *   exactly a TensorFlow.js `weights.bin` for the same manifest, and typed-array views need no copy.
 *
 * The SHA-256 of the whole bundle identifies it (model versions, update verification).
 */

if (endianness() !== 'LE') {
  // Typed arrays use the platform's byte order; the wire format is little-endian.
  throw new Error('fedline needs a little-endian CPU (x86-64, arm64)');
}

export const BUNDLE_MAGIC = Buffer.from('FLB1', 'ascii');
const HEADER_ALIGN = 8;
const TENSOR_ALIGN = 4;
export const MAX_HEADER_BYTES = 64 * 1024 * 1024;

export const tensorDtypes = ['float32'] as const;
export type TensorDtype = (typeof tensorDtypes)[number];

export interface TensorSpec {
  name: string;
  shape: number[];
  dtype: TensorDtype;
  /** Byte offset from the payload start. */
  offset: number;
  bytes: number;
}

export interface NamedTensor {
  name: string;
  shape: number[];
  dtype: TensorDtype;
  data: Float32Array;
}

export interface BundleHeader<M = unknown> {
  v: 1;
  tensors: TensorSpec[];
  meta: M;
}

const headerSchema = z.object({
  v: z.literal(1),
  tensors: z.array(
    z.object({
      name: z.string().min(1),
      shape: z.array(z.number().int().nonnegative()),
      dtype: z.enum(tensorDtypes),
      offset: z.number().int().nonnegative(),
      bytes: z.number().int().nonnegative(),
    }),
  ),
  meta: z.unknown(),
});

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

const alignUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/** Lay out tensors without copying them yet: returns the specs and the payload size. */
export function layoutTensors(tensors: readonly Pick<NamedTensor, 'name' | 'shape' | 'dtype'>[]): { specs: TensorSpec[]; payloadBytes: number } {
  let offset = 0;
  const seen = new Set<string>();
  const specs = tensors.map((t) => {
    if (seen.has(t.name)) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `duplicate tensor name "${t.name}" in bundle`);
    seen.add(t.name);
    const bytes = elementCount(t.shape) * 4;
    const spec: TensorSpec = { name: t.name, shape: [...t.shape], dtype: t.dtype, offset, bytes };
    offset = alignUp(offset + bytes, TENSOR_ALIGN);
    return spec;
  });
  return { specs, payloadBytes: offset };
}

function encodeHeader(specs: TensorSpec[], meta: unknown): { header: Buffer; payloadStart: number } {
  const header = packMsg({ v: 1, tensors: specs, meta });
  if (header.byteLength > MAX_HEADER_BYTES) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle header of ${header.byteLength} bytes is too large`);
  return { header, payloadStart: alignUp(8 + header.byteLength, HEADER_ALIGN) };
}

/** The size in bytes of the bundle `encodeBundle` would produce, without the tensor data. */
export function bundleSize(tensors: readonly Pick<NamedTensor, 'name' | 'shape' | 'dtype'>[], meta: unknown): number {
  const { specs, payloadBytes } = layoutTensors(tensors);
  return encodeHeader(specs, meta).payloadStart + payloadBytes;
}

/** Serialise tensors and meta into one bundle. */
export function encodeBundle(tensors: readonly NamedTensor[], meta: unknown): Buffer {
  for (const t of tensors) {
    if (t.data.length !== elementCount(t.shape)) {
      throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `tensor "${t.name}" has ${t.data.length} values but shape [${t.shape.join(', ')}]`);
    }
  }
  const { specs, payloadBytes } = layoutTensors(tensors);
  const { header, payloadStart } = encodeHeader(specs, meta);
  // allocUnsafeSlow: a buffer of its own (byteOffset 0), so the payload stays 8-byte aligned.
  const out = Buffer.allocUnsafeSlow(payloadStart + payloadBytes);
  out.fill(0, 0, payloadStart);
  BUNDLE_MAGIC.copy(out, 0);
  out.writeUInt32LE(header.byteLength, 4);
  header.copy(out, 8);
  tensors.forEach((t, i) => {
    const spec = specs[i]!;
    const src = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    src.copy(out, payloadStart + spec.offset);
    out.fill(0, payloadStart + spec.offset + spec.bytes, payloadStart + alignUp(spec.offset + spec.bytes, TENSOR_ALIGN));
  });
  return out;
}

export interface DecodedBundle<M = unknown> {
  header: BundleHeader<M>;
  payloadStart: number;
  bytes: Uint8Array;
}

/** Parse and check the header of a bundle (the payload is not copied). */
export function decodeBundle<M = unknown>(bytes: Uint8Array, metaSchema?: z.ZodType<M>): DecodedBundle<M> {
  if (bytes.byteLength < 8 || Buffer.compare(Buffer.from(bytes.buffer, bytes.byteOffset, 4), BUNDLE_MAGIC) !== 0) {
    throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, 'not a fedline tensor bundle (magic "FLB1" missing)');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerBytes = view.getUint32(4, true);
  if (headerBytes > MAX_HEADER_BYTES || 8 + headerBytes > bytes.byteLength) {
    throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle header length ${headerBytes} exceeds the bundle (${bytes.byteLength} bytes)`);
  }
  let raw: unknown;
  try {
    raw = unpackMsg(bytes.subarray(8, 8 + headerBytes));
  } catch (err) {
    throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle header is not msgpack: ${(err as Error).message}`);
  }
  const parsed = headerSchema.safeParse(raw);
  if (!parsed.success) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle header is malformed: ${formatIssues(parsed.error)}`);
  const payloadStart = alignUp(8 + headerBytes, HEADER_ALIGN);
  const payloadBytes = bytes.byteLength - payloadStart;
  const names = new Set<string>();
  for (const t of parsed.data.tensors) {
    if (names.has(t.name)) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `duplicate tensor "${t.name}" in bundle`);
    names.add(t.name);
    if (t.bytes !== elementCount(t.shape) * 4) {
      throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `tensor "${t.name}": ${t.bytes} bytes do not match shape [${t.shape.join(', ')}]`);
    }
    if (t.offset % 4 !== 0 || t.offset + t.bytes > payloadBytes) {
      throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `tensor "${t.name}" at offset ${t.offset} (+${t.bytes}) lies outside the payload of ${payloadBytes} bytes`);
    }
  }
  let meta: M = parsed.data.meta as M;
  if (metaSchema) {
    const m = metaSchema.safeParse(parsed.data.meta);
    if (!m.success) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle meta is malformed: ${formatIssues(m.error)}`);
    meta = m.data;
  }
  return { header: { v: 1, tensors: parsed.data.tensors, meta }, payloadStart, bytes };
}

/** A Float32Array over one tensor of a decoded bundle (a view when aligned, else a copy). */
export function tensorData(bundle: DecodedBundle<unknown>, spec: TensorSpec): Float32Array {
  const start = bundle.bytes.byteOffset + bundle.payloadStart + spec.offset;
  const count = spec.bytes / 4;
  if (start % 4 === 0) return new Float32Array(bundle.bytes.buffer, start, count);
  const copy = new Uint8Array(spec.bytes);
  copy.set(bundle.bytes.subarray(bundle.payloadStart + spec.offset, bundle.payloadStart + spec.offset + spec.bytes));
  return new Float32Array(copy.buffer);
}

export function bundleTensors(bundle: DecodedBundle<unknown>): NamedTensor[] {
  return bundle.header.tensors.map((spec) => ({ name: spec.name, shape: spec.shape, dtype: spec.dtype, data: tensorData(bundle, spec) }));
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
