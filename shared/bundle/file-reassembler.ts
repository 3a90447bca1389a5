import { createHash, type Hash } from 'node:crypto';
import { closeSync, fdatasync, ftruncateSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { checkChunk, checkGeometry, chunkLength, type AcceptResult, type Chunk, type ChunkGeometry } from './chunking.js';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';

/**
 * Chunk reassembly straight into a file, so that receiving a bundle costs a chunk of memory
 * whatever its size (a VGG-19 update is 557 MB) and whatever the number of senders:
 *
 * - each chunk is checked (geometry, CRC32) and written at seq * chunkBytes (pwrite);
 * - a bitmap records which chunks are in, so duplicates (QoS 1 redelivery) are dropped and the
 *   missing ones can be named;
 * - the bundle is hashed (SHA-256) in order while it arrives: when chunk `next` is in, it and every
 *   chunk after it already on disk are fed to the hash (and to `onInOrder`, which verifies the
 *   content as it streams by), so the digest is ready the moment the last chunk lands;
 * - written data is flushed to disk in the background every `syncEveryBytes`, so the fsync that
 *   makes the bundle durable at the end only waits for the tail.
 *
 * All file access in accept() is synchronous on purpose: a message handler that returns only when
 * its chunk is on disk keeps reading from the MQTT socket at the pace of the disk, which is the
 * back-pressure that keeps the broker and this process within bounded memory.
 */
export interface FileReassemblerOptions extends ChunkGeometry {
  path: string;
  /** Refuse bundles larger than this many bytes. */
  maxBundleBytes: number;
  /** Sees every byte of the bundle exactly once, in order, as soon as all bytes before it are in. Must not throw. */
  onInOrder?: (bytes: Uint8Array, offset: number) => void;
  /** Flush to disk in the background after this many bytes written. 0: only at finish. Default 64 MiB. */
  syncEveryBytes?: number;
}

export class FileReassembler {
  readonly path: string;
  readonly total: number;
  readonly bundleBytes: number;
  readonly chunkBytes: number;
  private fd: number | null;
  private readonly have: Uint8Array;
  private readonly hash: Hash = createHash('sha256');
  private readonly onInOrder: ((bytes: Uint8Array, offset: number) => void) | undefined;
  private readonly syncEveryBytes: number;
  private received = 0;
  private receivedBytesCount = 0;
  /** The first chunk not yet fed to the hash. */
  private next = 0;
  private digestHex: string | null = null;
  private scratch: Buffer | null = null;
  private unsyncedBytes = 0;
  private syncing: Promise<void> | null = null;

  constructor(options: FileReassemblerOptions) {
    checkGeometry(options, options.maxBundleBytes);
    this.path = options.path;
    this.total = options.total;
    this.bundleBytes = options.bundleBytes;
    this.chunkBytes = options.chunkBytes;
    this.onInOrder = options.onInOrder;
    this.syncEveryBytes = options.syncEveryBytes ?? 64 * 1024 * 1024;
    this.have = new Uint8Array(options.total);
    this.fd = openSync(this.path, 'w+');
    try {
      ftruncateSync(this.fd, this.bundleBytes);
    } catch (err) {
      closeSync(this.fd);
      this.fd = null;
      throw err;
    }
  }

  matches(g: ChunkGeometry): boolean {
    return g.total === this.total && g.bundleBytes === this.bundleBytes && g.chunkBytes === this.chunkBytes;
  }

  /** Store one chunk. Throws a FedlineError (nothing stored) when it is corrupt or foreign. */
  accept(chunk: Chunk): AcceptResult {
    if (this.fd === null) throw new Error(`reassembly into ${this.path} is closed`);
    checkChunk(chunk, this);
    if (this.have[chunk.seq]) return 'duplicate';
    writeAll(this.fd, chunk.data, chunk.seq * this.chunkBytes, this.path);
    this.have[chunk.seq] = 1;
    this.received++;
    this.receivedBytesCount += chunk.data.byteLength;
    this.unsyncedBytes += chunk.data.byteLength;
    this.advance(chunk);
    if (this.syncEveryBytes > 0 && this.unsyncedBytes >= this.syncEveryBytes && !this.syncing) {
      // A failed background flush is not fatal here: finish() flushes again and reports it.
      this.syncing = this.flush()
        .catch(() => undefined)
        .finally(() => (this.syncing = null));
    }
    return 'added';
  }

  /** Feed the hash (and onInOrder) with every chunk that is now in order. */
  private advance(just: Chunk): void {
    while (this.next < this.total && this.have[this.next]) {
      const seq = this.next;
      let bytes: Uint8Array;
      if (seq === just.seq) {
        bytes = just.data;
      } else {
        // Arrived earlier, out of order: read it back (from the page cache, normally).
        const n = chunkLength(seq, this.bundleBytes, this.chunkBytes);
        this.scratch ??= Buffer.allocUnsafeSlow(this.chunkBytes);
        bytes = this.scratch.subarray(0, n);
        readAll(this.fd!, bytes, seq * this.chunkBytes, this.path);
      }
      this.hash.update(bytes);
      this.onInOrder?.(bytes, seq * this.chunkBytes);
      this.next++;
    }
    if (this.next === this.total && this.digestHex === null) this.digestHex = this.hash.digest('hex');
  }

  private flush(): Promise<void> {
    const fd = this.fd;
    this.unsyncedBytes = 0;
    if (fd === null) return Promise.resolve();
    return new Promise<void>((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
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

  /**
   * Check the SHA-256 against `expected`, make the file durable (fsync) and close it. Returns the
   * path. Throws FL_BUNDLE_SHA on a mismatch (the file stays open: discard() it).
   */
  async finish(expected: string): Promise<string> {
    if (!this.complete || this.digestHex === null) {
      throw new FedlineError(ErrorCodes.CHUNK_MISMATCH, `bundle is incomplete: ${this.total - this.received} of ${this.total} chunks missing`, { missing: this.missing(20) });
    }
    if (this.digestHex !== expected) {
      throw new FedlineError(ErrorCodes.BUNDLE_SHA, `bundle SHA-256 mismatch: got ${this.digestHex}, announced ${expected}`, { actual: this.digestHex, expected });
    }
    await this.syncing;
    await this.flush();
    this.close();
    return this.path;
  }

  /** Close the file without deleting it. */
  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
  }

  /** Give up: close and delete the file. */
  discard(): void {
    this.close();
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

function writeAll(fd: number, data: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < data.byteLength) {
    const n = writeSync(fd, data, done, data.byteLength - done, position + done);
    if (n <= 0) throw new Error(`could not write to ${path}`);
    done += n;
  }
}

function readAll(fd: number, out: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < out.byteLength) {
    const n = readSync(fd, out, done, out.byteLength - done, position + done);
    if (n <= 0) throw new Error(`${path} is shorter than expected`);
    done += n;
  }
}
