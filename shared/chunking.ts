import { crc32 } from 'node:zlib';
import { ErrorCodes, FedlineError } from './errors.js';
import { sha256Hex } from './tensor-bundle.js';

/**
 * Cutting a bundle into MQTT-sized chunks and putting it back together.
 *
 * Every chunk names its place (seq of total), the bundle's size and SHA-256, and a CRC32 of its
 * own bytes. QoS 1 is "at least once" (MQTT 3.1.1 §4.3.2), so the reassembler accepts duplicates
 * and any order, and can say which chunks are still missing so that only those are resent.
 */

export const DEFAULT_CHUNK_BYTES = 256 * 1024;

export interface Chunk {
  seq: number;
  total: number;
  bundleBytes: number;
  chunkBytes: number;
  sha256: string;
  crc32: number;
  data: Uint8Array;
}

export function chunkCount(bundleBytes: number, chunkBytes: number): number {
  return Math.max(1, Math.ceil(bundleBytes / chunkBytes));
}

export function chunkLength(seq: number, bundleBytes: number, chunkBytes: number): number {
  return Math.min(chunkBytes, bundleBytes - seq * chunkBytes);
}

export function chunkAt(bundle: Uint8Array, seq: number, chunkBytes: number, sha256: string): Chunk {
  const total = chunkCount(bundle.byteLength, chunkBytes);
  if (!Number.isInteger(seq) || seq < 0 || seq >= total) throw new RangeError(`chunk ${seq} is outside 0..${total - 1}`);
  const data = bundle.subarray(seq * chunkBytes, seq * chunkBytes + chunkLength(seq, bundle.byteLength, chunkBytes));
  return { seq, total, bundleBytes: bundle.byteLength, chunkBytes, sha256, crc32: crc32(data), data };
}

/** All chunks of a bundle, lazily (each chunk's data is a view, not a copy). */
export function* splitIntoChunks(bundle: Uint8Array, chunkBytes: number, sha256 = sha256Hex(bundle)): Generator<Chunk> {
  const total = chunkCount(bundle.byteLength, chunkBytes);
  for (let seq = 0; seq < total; seq++) yield chunkAt(bundle, seq, chunkBytes, sha256);
}

export interface ReassemblerOptions {
  total: number;
  bundleBytes: number;
  chunkBytes: number;
  sha256: string;
  /** Refuse bundles larger than this many bytes (a sender cannot make us allocate without bound). */
  maxBundleBytes: number;
}

export type AcceptResult = 'added' | 'duplicate';

export class Reassembler {
  readonly total: number;
  readonly bundleBytes: number;
  readonly chunkBytes: number;
  readonly sha256: string;
  private readonly buffer: Buffer;
  private readonly have: Uint8Array;
  private received = 0;
  private receivedBytesCount = 0;

  constructor(options: ReassemblerOptions) {
    const { total, bundleBytes, chunkBytes, sha256, maxBundleBytes } = options;
    if (bundleBytes > maxBundleBytes) {
      throw new FedlineError(ErrorCodes.MSG_OVERSIZE, `bundle of ${bundleBytes} bytes exceeds the limit of ${maxBundleBytes} bytes`, { bundleBytes, maxBundleBytes });
    }
    if (chunkCount(bundleBytes, chunkBytes) !== total) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunk header is inconsistent: ${bundleBytes} bytes in chunks of ${chunkBytes} make ${chunkCount(bundleBytes, chunkBytes)} chunks, not ${total}`);
    }
    this.total = total;
    this.bundleBytes = bundleBytes;
    this.chunkBytes = chunkBytes;
    this.sha256 = sha256;
    this.buffer = Buffer.allocUnsafeSlow(bundleBytes);
    this.have = new Uint8Array(total);
  }

  static fromChunk(chunk: Chunk, maxBundleBytes: number): Reassembler {
    return new Reassembler({ total: chunk.total, bundleBytes: chunk.bundleBytes, chunkBytes: chunk.chunkBytes, sha256: chunk.sha256, maxBundleBytes });
  }

  /** Whether a chunk belongs to this bundle (same size, chunking and SHA-256). */
  matches(chunk: Pick<Chunk, 'total' | 'bundleBytes' | 'chunkBytes' | 'sha256'>): boolean {
    return chunk.sha256 === this.sha256 && chunk.total === this.total && chunk.bundleBytes === this.bundleBytes && chunk.chunkBytes === this.chunkBytes;
  }

  /** Store one chunk. Throws a FedlineError (nothing stored) when it is corrupt or foreign. */
  accept(chunk: Chunk): AcceptResult {
    if (!this.matches(chunk)) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunk ${chunk.seq} belongs to another bundle (sha256 ${chunk.sha256.slice(0, 12)}…, expected ${this.sha256.slice(0, 12)}…)`, { seq: chunk.seq });
    }
    if (!Number.isInteger(chunk.seq) || chunk.seq < 0 || chunk.seq >= this.total) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunk seq ${chunk.seq} is outside 0..${this.total - 1}`, { seq: chunk.seq });
    }
    const expected = chunkLength(chunk.seq, this.bundleBytes, this.chunkBytes);
    if (chunk.data.byteLength !== expected) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunk ${chunk.seq} carries ${chunk.data.byteLength} bytes, expected ${expected}`, { seq: chunk.seq });
    }
    const crc = crc32(chunk.data);
    if (crc !== chunk.crc32) {
      throw new FedlineError(ErrorCodes.CHUNK_CRC, `chunk ${chunk.seq} fails its CRC32 (got ${crc.toString(16)}, header says ${chunk.crc32.toString(16)})`, { seq: chunk.seq });
    }
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

  /** The whole bundle, after checking its SHA-256. */
  finish(): Buffer {
    if (!this.complete) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `bundle is incomplete: ${this.total - this.received} of ${this.total} chunks missing`, { missing: this.missing(20) });
    }
    const actual = sha256Hex(this.buffer);
    if (actual !== this.sha256) {
      throw new FedlineError(ErrorCodes.BUNDLE_SHA, `bundle SHA-256 mismatch: got ${actual}, announced ${this.sha256}`, { actual, expected: this.sha256 });
    }
    return this.buffer;
  }
}
