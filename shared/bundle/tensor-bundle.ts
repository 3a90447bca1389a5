import { createHash } from 'node:crypto';
import { endianness } from 'node:os';
import { z } from 'zod';
import { packMsg, unpackMsg, formatIssues } from '../protocol/wire-codec.js';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import { encodedBytes, MAX_Q8_BLOCK, valueDtypes, type ValueDtype } from './value-encodings.js';

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
 *   Updates may carry their values encoded (shared/bundle/value-encodings.ts): dtype `float16`, or `q8`
 *   with its `block` size; global models are always float32.
 *
 * The SHA-256 of the whole bundle identifies it (model versions, update verification).
 */

if (endianness() !== 'LE') {
  // Typed arrays use the platform's byte order; the wire format is little-endian.
  throw new FedlineError(ErrorCodes.PLATFORM, 'fedline needs a little-endian CPU (x86-64, arm64)');
}

const BUNDLE_MAGIC = Buffer.from('FLB1', 'ascii');
const HEADER_ALIGN = 8;
const TENSOR_ALIGN = 4;
const MAX_HEADER_BYTES = 64 * 1024 * 1024;

const tensorDtypes = valueDtypes;
export type TensorDtype = ValueDtype;

export interface TensorSpec {
  name: string;
  shape: number[];
  dtype: TensorDtype;
  /** Byte offset from the payload start. */
  offset: number;
  bytes: number;
  /** q8 only: values per block (each block has its own scale). */
  block?: number;
}

/** A tensor held in memory: always float32 values (encodings exist only on the wire). */
export interface NamedTensor {
  name: string;
  shape: number[];
  dtype: 'float32';
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
      block: z.number().int().min(1).max(MAX_Q8_BLOCK).optional(),
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
export function layoutTensors(tensors: readonly { name: string; shape: readonly number[]; dtype: TensorDtype; block?: number }[]): {
  specs: TensorSpec[];
  payloadBytes: number;
} {
  let offset = 0;
  const seen = new Set<string>();
  const specs = tensors.map((t) => {
    if (seen.has(t.name)) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `duplicate tensor name "${t.name}" in bundle`);
    seen.add(t.name);
    const bytes = encodedBytes(t.dtype, elementCount(t.shape), t.block);
    // Only q8 tensors carry `block`: no undefined fields (they are not standard msgpack).
    const spec: TensorSpec = { name: t.name, shape: [...t.shape], dtype: t.dtype, offset, bytes, ...(t.dtype === 'q8' ? { block: t.block! } : {}) };
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

/**
 * The bytes of a bundle before its payload (magic, header length, header, zero padding), for
 * writers that stream the payload instead of building the whole bundle in memory.
 */
export function encodeBundlePrefix(specs: TensorSpec[], meta: unknown): Buffer {
  const { header, payloadStart } = encodeHeader(specs, meta);
  const out = Buffer.alloc(payloadStart);
  BUNDLE_MAGIC.copy(out, 0);
  out.writeUInt32LE(header.byteLength, 4);
  header.copy(out, 8);
  return out;
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

/**
 * How many leading bytes of a bundle hold its header: 8 when fewer than 8 are known yet (read
 * more), else the payload start. Throws when the prefix is not a bundle.
 */
export function bundlePrefixBytes(prefix: Uint8Array, bundleBytes: number): number {
  if (prefix.byteLength < 8) return 8;
  if (Buffer.compare(Buffer.from(prefix.buffer, prefix.byteOffset, 4), BUNDLE_MAGIC) !== 0) {
    throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, 'not a fedline tensor bundle (magic "FLB1" missing)');
  }
  const headerBytes = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength).getUint32(4, true);
  if (headerBytes > MAX_HEADER_BYTES || 8 + headerBytes > bundleBytes) {
    throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle header length ${headerBytes} exceeds the bundle (${bundleBytes} bytes)`);
  }
  return Math.min(bundleBytes, alignUp(8 + headerBytes, HEADER_ALIGN));
}

/**
 * Parse and check a bundle's header from its first bytes (at least bundlePrefixBytes of them) and
 * the bundle's total size; the payload need not be there. Every tensor must lie inside the payload.
 */
export function decodeBundleHeader<M = unknown>(
  prefix: Uint8Array,
  bundleBytes: number,
  metaSchema?: z.ZodType<M>,
): { header: BundleHeader<M>; payloadStart: number } {
  if (prefix.byteLength < 8) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, 'not a fedline tensor bundle (shorter than 8 bytes)');
  const payloadStart = bundlePrefixBytes(prefix, bundleBytes);
  const headerBytes = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength).getUint32(4, true);
  if (prefix.byteLength < 8 + headerBytes) throw new RangeError(`need ${8 + headerBytes} bytes of the bundle to read its header, got ${prefix.byteLength}`);
  let raw: unknown;
  try {
    raw = unpackMsg(prefix.subarray(8, 8 + headerBytes));
  } catch (err) {
    throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle header is not msgpack: ${(err as Error).message}`);
  }
  const parsed = headerSchema.safeParse(raw);
  if (!parsed.success) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle header is malformed: ${formatIssues(parsed.error)}`);
  const payloadBytes = bundleBytes - payloadStart;
  const names = new Set<string>();
  for (const t of parsed.data.tensors) {
    if (names.has(t.name)) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `duplicate tensor "${t.name}" in bundle`);
    names.add(t.name);
    if (t.dtype === 'q8' && t.block === undefined) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `q8 tensor "${t.name}" has no block size`);
    if (t.dtype !== 'q8' && t.block !== undefined) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `${t.dtype} tensor "${t.name}" has a block size`);
    if (t.bytes !== encodedBytes(t.dtype, elementCount(t.shape), t.block)) {
      throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `tensor "${t.name}": ${t.bytes} bytes do not match ${t.dtype}[${t.shape.join(', ')}]`);
    }
    if (t.offset % 4 !== 0 || t.offset + t.bytes > payloadBytes) {
      throw new FedlineError(
        ErrorCodes.BUNDLE_FORMAT,
        `tensor "${t.name}" at offset ${t.offset} (+${t.bytes}) lies outside the payload of ${payloadBytes} bytes`,
      );
    }
  }
  let meta: M = parsed.data.meta as M;
  if (metaSchema) {
    const m = metaSchema.safeParse(parsed.data.meta);
    if (!m.success) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `bundle meta is malformed: ${formatIssues(m.error)}`);
    meta = m.data;
  }
  const tensors = parsed.data.tensors.map((t) => ({ ...t }) as TensorSpec);
  return { header: { v: 1, tensors, meta }, payloadStart };
}

/** Parse and check the header of a bundle (the payload is not copied). */
export function decodeBundle<M = unknown>(bytes: Uint8Array, metaSchema?: z.ZodType<M>): DecodedBundle<M> {
  if (bytes.byteLength < 8) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, 'not a fedline tensor bundle (magic "FLB1" missing)');
  const { header, payloadStart } = decodeBundleHeader(bytes, bytes.byteLength, metaSchema);
  return { header, payloadStart, bytes };
}

/** A Float32Array over one float32 tensor of a decoded bundle (a view when aligned, else a copy). */
function tensorData(bundle: DecodedBundle<unknown>, spec: TensorSpec): Float32Array {
  if (spec.dtype !== 'float32')
    throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `tensor "${spec.name}" is ${spec.dtype}; decode it with shared/bundle/value-encodings.ts`);
  const start = bundle.bytes.byteOffset + bundle.payloadStart + spec.offset;
  const count = spec.bytes / 4;
  if (start % 4 === 0) return new Float32Array(bundle.bytes.buffer, start, count);
  const copy = new Uint8Array(spec.bytes);
  copy.set(bundle.bytes.subarray(bundle.payloadStart + spec.offset, bundle.payloadStart + spec.offset + spec.bytes));
  return new Float32Array(copy.buffer);
}

export function bundleTensors(bundle: DecodedBundle<unknown>): NamedTensor[] {
  return bundle.header.tensors.map((spec) => ({ name: spec.name, shape: spec.shape, dtype: 'float32' as const, data: tensorData(bundle, spec) }));
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
