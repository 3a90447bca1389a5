import { crc32 } from 'node:zlib';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import { sha256Hex } from './tensor-bundle.js';

/**
 * Cutting a bundle into MQTT-sized chunks and putting it back together.
 *
 * Every chunk names its place (seq of total), the bundle's size, and a CRC32 of its own bytes;
 * the message around it says which bundle it belongs to (a model's SHA-256, an update's upload
 * id). QoS 1 is "at least once" (MQTT 3.1.1 §4.3.2), so reassembly accepts duplicates and any
 * order, and can say which chunks are still missing so that only those are resent. The bundle's
 * SHA-256 is checked once every chunk is in. This in-memory reassembler suits small bundles and
 * tests; shared/bundle/file-reassembler.ts writes large ones straight to disk.
 */

export const DEFAULT_CHUNK_BYTES = 256 * 1024;

export interface ChunkGeometry {
  total: number;
  bundleBytes: number;
  chunkBytes: number;
}

export interface Chunk extends ChunkGeometry {
  seq: number;
  crc32: number;
  data: Uint8Array;
}

export function chunkCount(bundleBytes: number, chunkBytes: number): number {
  return Math.max(1, Math.ceil(bundleBytes / chunkBytes));
}

export function chunkLength(seq: number, bundleBytes: number, chunkBytes: number): number {
  return Math.min(chunkBytes, bundleBytes - seq * chunkBytes);
}

export function chunkAt(bundle: Uint8Array, seq: number, chunkBytes: number): Chunk {
  const total = chunkCount(bundle.byteLength, chunkBytes);
  if (!Number.isInteger(seq) || seq < 0 || seq >= total) throw new RangeError(`chunk ${seq} is outside 0..${total - 1}`);
  const data = bundle.subarray(seq * chunkBytes, seq * chunkBytes + chunkLength(seq, bundle.byteLength, chunkBytes));
  return { seq, total, bundleBytes: bundle.byteLength, chunkBytes, crc32: crc32(data), data };
}

/** All chunks of a bundle, lazily (each chunk's data is a view, not a copy). */
export function* splitIntoChunks(bundle: Uint8Array, chunkBytes: number): Generator<Chunk> {
  const total = chunkCount(bundle.byteLength, chunkBytes);
  for (let seq = 0; seq < total; seq++) yield chunkAt(bundle, seq, chunkBytes);
}

/** Refuse geometries that are inconsistent or larger than allowed (a sender cannot make us allocate without bound). */
export function checkGeometry(g: ChunkGeometry, maxBundleBytes: number): void {
  const { total, bundleBytes, chunkBytes } = g;
  if (bundleBytes > maxBundleBytes) {
    throw new FedlineError(ErrorCodes.MSG_OVERSIZE, `bundle of ${bundleBytes} bytes exceeds the limit of ${maxBundleBytes} bytes`, { bundleBytes, maxBundleBytes });
  }
  if (chunkCount(bundleBytes, chunkBytes) !== total) {
    throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunk header is inconsistent: ${bundleBytes} bytes in chunks of ${chunkBytes} make ${chunkCount(bundleBytes, chunkBytes)} chunks, not ${total}`);
  }
}

export function sameGeometry(a: ChunkGeometry, b: ChunkGeometry): boolean {
  return a.total === b.total && a.bundleBytes === b.bundleBytes && a.chunkBytes === b.chunkBytes;
}

/** Check one chunk against its bundle's geometry and its own CRC32. Throws a FedlineError naming what is wrong. */
export function checkChunk(chunk: Chunk, g: ChunkGeometry): void {
  if (!sameGeometry(chunk, g)) {
    throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunk ${chunk.seq} belongs to another bundle (${chunk.bundleBytes} bytes in ${chunk.total} chunks of ${chunk.chunkBytes}; expected ${g.bundleBytes} in ${g.total} of ${g.chunkBytes})`, { seq: chunk.seq });
  }
  if (!Number.isInteger(chunk.seq) || chunk.seq < 0 || chunk.seq >= g.total) {
    throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunk seq ${chunk.seq} is outside 0..${g.total - 1}`, { seq: chunk.seq });
  }
  const expected = chunkLength(chunk.seq, g.bundleBytes, g.chunkBytes);
  if (chunk.data.byteLength !== expected) {
    throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunk ${chunk.seq} carries ${chunk.data.byteLength} bytes, expected ${expected}`, { seq: chunk.seq });
  }
  const crc = crc32(chunk.data);
  if (crc !== chunk.crc32) {
    throw new FedlineError(ErrorCodes.CHUNK_CRC, `chunk ${chunk.seq} fails its CRC32 (got ${crc.toString(16)}, header says ${chunk.crc32.toString(16)})`, { seq: chunk.seq });
  }
}

export interface ReassemblerOptions extends ChunkGeometry {
  /** The bundle's SHA-256 when known up front (models); updates learn it from `update-done`. */
  sha256?: string | null;
  /** Refuse bundles larger than this many bytes (a sender cannot make us allocate without bound). */
  maxBundleBytes: number;
}

export type AcceptResult = 'added' | 'duplicate';

export class Reassembler {
  readonly total: number;
  readonly bundleBytes: number;
  readonly chunkBytes: number;
  readonly sha256: string | null;
  private readonly buffer: Buffer;
  private readonly have: Uint8Array;
  private received = 0;
  private receivedBytesCount = 0;

  constructor(options: ReassemblerOptions) {
    checkGeometry(options, options.maxBundleBytes);
    this.total = options.total;
    this.bundleBytes = options.bundleBytes;
    this.chunkBytes = options.chunkBytes;
    this.sha256 = options.sha256 ?? null;
    this.buffer = Buffer.allocUnsafeSlow(options.bundleBytes);
    this.have = new Uint8Array(options.total);
  }

  static fromChunk(chunk: Chunk, maxBundleBytes: number, sha256: string | null = null): Reassembler {
    return new Reassembler({ total: chunk.total, bundleBytes: chunk.bundleBytes, chunkBytes: chunk.chunkBytes, sha256, maxBundleBytes });
  }

  /** Whether a chunk has this bundle's geometry (same size and chunking). */
  matches(chunk: ChunkGeometry): boolean {
    return sameGeometry(chunk, this);
  }

  /** Store one chunk. Throws a FedlineError (nothing stored) when it is corrupt or foreign. */
  accept(chunk: Chunk): AcceptResult {
    checkChunk(chunk, this);
    if (this.have[chunk.seq]) return 'duplicate';
    this.buffer.set(chunk.data, chunk.seq * this.chunkBytes);
    this.have[chunk.seq] = 1;
    this.received++;
    this.receivedBytesCount += chunk.data.byteLength;
    return 'added';
  }

  get complete(): boolean {
    return this.received === this.total;
  }

  get receivedChunks(): number {
    return this.received;
  }

  get receivedBytes(): number {
    return this.receivedBytesCount;
  }

  /** Sequence numbers not received yet, ascending (at most `limit`). */
  missing(limit = Number.POSITIVE_INFINITY): number[] {
    const out: number[] = [];
    for (let seq = 0; seq < this.total && out.length < limit; seq++) if (!this.have[seq]) out.push(seq);
    return out;
  }

  /** The whole bundle, after checking its SHA-256 against `expected` (default: the one given up front). */
  finish(expected: string | null = this.sha256): Buffer {
    if (!this.complete) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `bundle is incomplete: ${this.total - this.received} of ${this.total} chunks missing`, { missing: this.missing(20) });
    }
    if (expected === null) throw new Error('Reassembler.finish needs the SHA-256 to check against');
    const actual = sha256Hex(this.buffer);
    if (actual !== expected) {
      throw new FedlineError(ErrorCodes.BUNDLE_SHA, `bundle SHA-256 mismatch: got ${actual}, announced ${expected}`, { actual, expected });
    }
    return this.buffer;
  }
}
