import { open, type FileHandle } from 'node:fs/promises';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';

/**
 * Random access to the bytes of a bundle that need not be in memory as a whole: a buffer, files on
 * disk (a stored global model), or an update encoded on the fly (shared/bundle/encoded-update.ts). The
 * chunk publisher reads one chunk at a time from it, so sending a 557 MB model or update costs a
 * few chunks of memory, not a copy of the bundle.
 */
export interface BundleSource {
  readonly byteLength: number;
  /** Fill `out` with the bundle's bytes [offset, offset + out.byteLength). */
  read(offset: number, out: Uint8Array): void | Promise<void>;
}

export function memorySource(bytes: Uint8Array): BundleSource {
  return {
    byteLength: bytes.byteLength,
    read(offset, out) {
      if (offset < 0 || offset + out.byteLength > bytes.byteLength)
        throw new RangeError(`read of ${out.byteLength} bytes at ${offset} is outside ${bytes.byteLength} bytes`);
      out.set(bytes.subarray(offset, offset + out.byteLength));
    },
  };
}

export function isBundleSource(x: Uint8Array | BundleSource): x is BundleSource {
  return !(x instanceof Uint8Array);
}

export interface FileBundleSource extends BundleSource {
  close(): Promise<void>;
}

/** Read all of `out` from a file at `position`; a short file is an error, not zeros. */
export async function readFully(fh: FileHandle, out: Uint8Array, position: number, what: string): Promise<void> {
  let done = 0;
  while (done < out.byteLength) {
    const { bytesRead } = await fh.read(out, done, out.byteLength - done, position + done);
    if (bytesRead === 0) throw new FedlineError(ErrorCodes.STORAGE, `${what} is shorter than expected (read ${position + done} bytes)`);
    done += bytesRead;
  }
}

/**
 * A bundle stored as consecutive files (the model store keeps header.bin and weights.bin apart,
 * so that weights.bin is a tfjs weights file).
 */
export async function openFileSource(parts: readonly { path: string; bytes: number }[]): Promise<FileBundleSource> {
  const handles: FileHandle[] = [];
  try {
    for (const p of parts) handles.push(await open(p.path, 'r'));
  } catch (err) {
    await Promise.all(handles.map((h) => h.close()));
    throw err;
  }
  const starts: number[] = [];
  let total = 0;
  for (const p of parts) {
    starts.push(total);
    total += p.bytes;
  }
  return {
    byteLength: total,
    async read(offset, out) {
      if (offset < 0 || offset + out.byteLength > total) throw new RangeError(`read of ${out.byteLength} bytes at ${offset} is outside ${total} bytes`);
      let pos = offset;
      let done = 0;
      while (done < out.byteLength) {
        let i = parts.length - 1;
        while (starts[i]! > pos) i--;
        const within = pos - starts[i]!;
        const n = Math.min(out.byteLength - done, parts[i]!.bytes - within);
        await readFully(handles[i]!, out.subarray(done, done + n), within, parts[i]!.path);
        done += n;
        pos += n;
      }
    },
    close: async () => {
      await Promise.all(handles.map((h) => h.close()));
    },
  };
}
