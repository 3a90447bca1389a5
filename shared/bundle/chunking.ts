import { crc32 } from 'node:zlib';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';

/**
 * Cutting a bundle into MQTT-sized chunks, and checking a chunk that arrives.
 *
 * Every chunk names its place (seq of total), the bundle's size, and a CRC32 of its own bytes;
 * the message around it says which bundle it belongs to (a model's SHA-256, an update's upload
 * id). Putting the chunks back together is reassembly.ts's (in memory) and file-reassembler.ts's
 * (on disk).
 */

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

function chunkAt(bundle: Uint8Array, seq: number, chunkBytes: number): Chunk {
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
    throw new FedlineError(ErrorCodes.MSG_OVERSIZE, `bundle of ${bundleBytes} bytes exceeds the limit of ${maxBundleBytes} bytes`, {
      bundleBytes,
      maxBundleBytes,
    });
  }
  if (chunkCount(bundleBytes, chunkBytes) !== total) {
    throw new FedlineError(
      ErrorCodes.CHUNK_MISMATCH,
      `chunk header is inconsistent: ${bundleBytes} bytes in chunks of ${chunkBytes} make ${chunkCount(bundleBytes, chunkBytes)} chunks, not ${total}`,
    );
  }
}

export function sameGeometry(a: ChunkGeometry, b: ChunkGeometry): boolean {
  return a.total === b.total && a.bundleBytes === b.bundleBytes && a.chunkBytes === b.chunkBytes;
}

/** Check one chunk against its bundle's geometry and its own CRC32. Throws a FedlineError naming what is wrong. */
export function checkChunk(chunk: Chunk, g: ChunkGeometry): void {
  if (!sameGeometry(chunk, g)) {
    throw new FedlineError(
      ErrorCodes.CHUNK_MISMATCH,
      `chunk ${chunk.seq} belongs to another bundle (${chunk.bundleBytes} bytes in ${chunk.total} chunks of ${chunk.chunkBytes}; expected ${g.bundleBytes} in ${g.total} of ${g.chunkBytes})`,
      { seq: chunk.seq },
    );
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
    throw new FedlineError(ErrorCodes.CHUNK_CRC, `chunk ${chunk.seq} fails its CRC32 (got ${crc.toString(16)}, header says ${chunk.crc32.toString(16)})`, {
      seq: chunk.seq,
    });
  }
}

export type AcceptResult = 'added' | 'duplicate';
