import { closeSync, fdatasync, ftruncateSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import type { AcceptResult, Chunk } from './chunking.js';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import { ChunkReassembly, type ReassemblyOptions, type ReassemblySink } from './reassembly.js';

/**
 * Chunk reassembly straight into a file, so that receiving a bundle costs a chunk of memory
 * whatever its size (a VGG-19 update is 557 MB) and whatever the number of senders. The
 * bookkeeping (duplicates, any order, CRC32, missing list, SHA-256 hashed in order while the
 * bundle arrives) is ChunkReassembly's (reassembly.ts); this file is the sink:
 *
 * - each chunk is written at seq * chunkBytes (pwrite); chunks that arrived out of order are read
 *   back (from the page cache, normally) when their turn in the hash comes;
 * - written data is flushed to disk in the background every `syncEveryBytes`, so the fsync that
 *   makes the bundle durable at the end only waits for the tail.
 *
 * All file access in accept() is synchronous on purpose: a message handler that returns only when
 * its chunk is on disk keeps reading from the MQTT socket at the pace of the disk, which is the
 * back-pressure that keeps the broker and this process within bounded memory.
 */
export interface FileReassemblerOptions extends ReassemblyOptions {
  path: string;
  /** Flush to disk in the background after this many bytes written. 0: only at finish. Default 64 MiB. */
  syncEveryBytes?: number;
}

class FileSink implements ReassemblySink {
  fd: number | null;
  /** The background flush in progress, if any. */
  syncing: Promise<void> | null = null;
  private scratch: Buffer | null = null;
  private unsyncedBytes = 0;

  constructor(
    readonly path: string,
    bundleBytes: number,
    private readonly chunkBytes: number,
    private readonly syncEveryBytes: number,
  ) {
    this.fd = openSync(path, 'w+');
    try {
      ftruncateSync(this.fd, bundleBytes);
    } catch (err) {
      closeSync(this.fd);
      this.fd = null;
      throw err;
    }
  }

  write(data: Uint8Array, offset: number): void {
    writeAll(this.fd!, data, offset, this.path);
    this.unsyncedBytes += data.byteLength;
    if (this.syncEveryBytes > 0 && this.unsyncedBytes >= this.syncEveryBytes && !this.syncing) {
      // A failed background flush is not fatal here: finish() flushes again and reports it.
      this.syncing = this.flush()
        .catch(() => undefined)
        .finally(() => (this.syncing = null));
    }
  }

  read(offset: number, length: number): Uint8Array {
    this.scratch ??= Buffer.allocUnsafeSlow(this.chunkBytes);
    const bytes = this.scratch.subarray(0, length);
    readAll(this.fd!, bytes, offset, this.path);
    return bytes;
  }

  flush(): Promise<void> {
    const fd = this.fd;
    this.unsyncedBytes = 0;
    if (fd === null) return Promise.resolve();
    return new Promise<void>((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
  }
}

export class FileReassembler extends ChunkReassembly<FileSink> {
  readonly path: string;

  constructor(options: FileReassemblerOptions) {
    super(options, () => new FileSink(options.path, options.bundleBytes, options.chunkBytes, options.syncEveryBytes ?? 64 * 1024 * 1024));
    this.path = options.path;
  }

  /** Store one chunk. Throws a FedlineError (nothing stored) when it is corrupt or foreign. */
  override accept(chunk: Chunk): AcceptResult {
    // Accepting after finish() or discard() is a bug of the caller, not something a sender can cause.
    if (this.sink.fd === null) throw new Error(`reassembly into ${this.path} is closed`);
    return super.accept(chunk);
  }

  /**
   * Check the SHA-256 against `expected`, make the file durable (fsync) and close it. Returns the
   * path. Throws FL_BUNDLE_SHA on a mismatch (the file stays open: discard() it).
   */
  async finish(expected: string): Promise<string> {
    this.verify(expected);
    await this.sink.syncing;
    await this.sink.flush();
    this.close();
    return this.path;
  }

  /** Close the file without deleting it. */
  close(): void {
    this.sink.close();
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
    if (n <= 0) throw new FedlineError(ErrorCodes.STORAGE, `could not write to ${path}`);
    done += n;
  }
}

function readAll(fd: number, out: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < out.byteLength) {
    const n = readSync(fd, out, done, out.byteLength - done, position + done);
    if (n <= 0) throw new FedlineError(ErrorCodes.STORAGE, `${path} is shorter than expected`);
    done += n;
  }
}
