import { createHash, type Hash } from 'node:crypto';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import { checkChunk, checkGeometry, chunkLength, sameGeometry, type AcceptResult, type Chunk, type ChunkGeometry } from './chunking.js';

/**
 * Putting a chunked bundle back together, whatever holds its bytes. QoS 1 is "at least once"
 * (MQTT 3.1.1 §4.3.2), so reassembly accepts duplicates and any order, and can say which chunks
 * are still missing so that only those are resent:
 *
 * - each chunk is checked (geometry, CRC32) and handed to the sink at seq * chunkBytes;
 * - a bitmap records which chunks are in, so duplicates are dropped and the missing ones named;
 * - the bundle is hashed (SHA-256) in order while it arrives: when chunk `next` is in, it and every
 *   chunk after it already stored are fed to the hash (and to `onInOrder`, which can verify the
 *   content as it streams by), so the digest is ready the moment the last chunk lands.
 *
 * The sink decides where the bytes live: `Reassembler` (below) keeps them in memory, for small
 * bundles and tests; `FileReassembler` (file-reassembler.ts) writes them to disk, for large ones.
 */

/** Where a reassembly stores the chunks' bytes. */
export interface ReassemblySink {
  /** Store `data` at `offset` of the bundle. */
  write(data: Uint8Array, offset: number): void;
  /** `length` bytes stored earlier at `offset` (a view valid until the next call). */
  read(offset: number, length: number): Uint8Array;
}

export interface ReassemblyOptions extends ChunkGeometry {
  /** Refuse bundles larger than this many bytes (a sender cannot make us allocate without bound). */
  maxBundleBytes: number;
  /** Sees every byte of the bundle exactly once, in order, as soon as all bytes before it are in. Must not throw. */
  onInOrder?: (bytes: Uint8Array, offset: number) => void;
}

/** The bookkeeping common to every sink: which chunks are in, the in-order hash, the final checks. */
export abstract class ChunkReassembly<S extends ReassemblySink = ReassemblySink> {
  readonly total: number;
  readonly bundleBytes: number;
  readonly chunkBytes: number;
  protected readonly sink: S;
  private readonly have: Uint8Array;
  private readonly hash: Hash = createHash('sha256');
  private readonly onInOrder: ((bytes: Uint8Array, offset: number) => void) | undefined;
  private received = 0;
  private receivedBytesCount = 0;
  /** The first chunk not yet fed to the hash. */
  private next = 0;
  private digestHex: string | null = null;

  /** `makeSink` runs only once the geometry is known to be sane, so a refused bundle allocates nothing. */
  protected constructor(options: ReassemblyOptions, makeSink: () => S) {
    checkGeometry(options, options.maxBundleBytes);
    this.total = options.total;
    this.bundleBytes = options.bundleBytes;
    this.chunkBytes = options.chunkBytes;
    this.onInOrder = options.onInOrder;
    this.have = new Uint8Array(options.total);
    this.sink = makeSink();
  }

  /** Whether a chunk has this bundle's geometry (same size and chunking). */
  matches(chunk: ChunkGeometry): boolean {
    return sameGeometry(chunk, this);
  }

  /** Store one chunk. Throws a FedlineError (nothing stored) when it is corrupt or foreign. */
  accept(chunk: Chunk): AcceptResult {
    checkChunk(chunk, this);
    if (this.have[chunk.seq]) return 'duplicate';
    this.sink.write(chunk.data, chunk.seq * this.chunkBytes);
    this.have[chunk.seq] = 1;
    this.received++;
    this.receivedBytesCount += chunk.data.byteLength;
    this.advance(chunk);
    return 'added';
  }

  /** Feed the hash (and onInOrder) with every chunk that is now in order. */
  private advance(just: Chunk): void {
    while (this.next < this.total && this.have[this.next]) {
      const seq = this.next;
      // A chunk that arrived earlier, out of order, is read back from the sink.
      const bytes = seq === just.seq ? just.data : this.sink.read(seq * this.chunkBytes, chunkLength(seq, this.bundleBytes, this.chunkBytes));
      this.hash.update(bytes);
      this.onInOrder?.(bytes, seq * this.chunkBytes);
      this.next++;
    }
    if (this.next === this.total && this.digestHex === null) this.digestHex = this.hash.digest('hex');
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

  /** The bundle's SHA-256 (hex) once every chunk is in, else null. */
  get digest(): string | null {
    return this.digestHex;
  }

  /** Sequence numbers not received yet, ascending (at most `limit`). */
  missing(limit = Number.POSITIVE_INFINITY): number[] {
    const out: number[] = [];
    for (let seq = 0; seq < this.total && out.length < limit; seq++) if (!this.have[seq]) out.push(seq);
    return out;
  }

  /** Throw unless every chunk is in and the bundle's SHA-256 is `expected`. */
  protected verify(expected: string | null): void {
    if (!this.complete || this.digestHex === null) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `bundle is incomplete: ${this.total - this.received} of ${this.total} chunks missing`, {
        missing: this.missing(20),
      });
    }
    // A caller without a SHA-256 to check against is a bug: an unchecked bundle must not be handed on.
    if (expected === null) throw new Error('reassembly needs the SHA-256 to check against');
    if (this.digestHex !== expected) {
      throw new FedlineError(ErrorCodes.BUNDLE_SHA, `bundle SHA-256 mismatch: got ${this.digestHex}, announced ${expected}`, {
        actual: this.digestHex,
        expected,
      });
    }
  }
}

export interface ReassemblerOptions extends ReassemblyOptions {
  /** The bundle's SHA-256 when known up front (models); updates learn it from `update-done`. */
  sha256?: string | null;
}

/** The memory sink: one buffer of the bundle's size. */
class MemorySink implements ReassemblySink {
  readonly buffer: Buffer;

  constructor(bundleBytes: number) {
    this.buffer = Buffer.allocUnsafeSlow(bundleBytes);
  }

  write(data: Uint8Array, offset: number): void {
    this.buffer.set(data, offset);
  }

  read(offset: number, length: number): Uint8Array {
    return this.buffer.subarray(offset, offset + length);
  }
}

/** Reassembly in memory: for small bundles (a model fetched into memory, the test federation's copy of updates). */
export class Reassembler extends ChunkReassembly<MemorySink> {
  readonly sha256: string | null;

  constructor(options: ReassemblerOptions) {
    super(options, () => new MemorySink(options.bundleBytes));
    this.sha256 = options.sha256 ?? null;
  }

  static fromChunk(chunk: Chunk, maxBundleBytes: number, sha256: string | null = null): Reassembler {
    return new Reassembler({ total: chunk.total, bundleBytes: chunk.bundleBytes, chunkBytes: chunk.chunkBytes, sha256, maxBundleBytes });
  }

  /** The whole bundle, after checking its SHA-256 against `expected` (default: the one given up front). */
  finish(expected: string | null = this.sha256): Buffer {
    this.verify(expected);
    return this.sink.buffer;
  }
}
