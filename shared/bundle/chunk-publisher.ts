import { crc32 } from 'node:zlib';
import { isBundleSource, memorySource, type BundleSource } from './bundle-source.js';
import { chunkCount, chunkLength, type Chunk } from './chunking.js';
import { packMsg } from '../protocol/wire-codec.js';
import type { Transport } from '../transport/transport.js';

/**
 * Room before a chunk's bytes for the rest of its message (fields are ~150 bytes); with the data
 * prefix, the chunk's bytes start 8-byte aligned, so sources can fill them through typed arrays.
 */
const HEADROOM = 1030;
/** The map key `data` (fixstr) and a bin32 header: 5 + 5 bytes. */
const DATA_PREFIX = 10;

/**
 * A chunk message built around its bytes: the source reads the chunk straight into the message
 * buffer, and the other fields are packed in front of it afterwards (once the CRC32 is known), so
 * a chunk's bytes are copied once on their way from the source to the socket instead of twice.
 * The result is the same standard msgpack map packMsg would make, with `data` as bin32. Buffers
 * come from a small pool and return to it once the broker acknowledged the message: allocating a
 * fresh 256 KiB buffer per chunk keeps the garbage collector busy for nothing.
 */
class ChunkMessage {
  private readonly buffer: Buffer;
  readonly data: Buffer;

  constructor(buffer: Buffer, bytes: number) {
    this.buffer = buffer;
    this.data = this.buffer.subarray(HEADROOM + DATA_PREFIX, HEADROOM + DATA_PREFIX + bytes);
  }

  /** The message for these fields (`data` among them must be this.data). */
  finish(fields: Record<string, unknown>): Buffer {
    const { data, ...rest } = fields;
    // An invariant of publishChunks below, not something a peer or a user can cause.
    if (data !== this.data) throw new Error("chunk message: data must be the message's own buffer");
    const kv = packMsg(rest);
    const count = Object.keys(rest).length;
    const end = HEADROOM + DATA_PREFIX + this.data.byteLength;
    let start: number;
    if (kv[0] === (0x80 | count) && count + 1 <= 15 && kv.byteLength <= HEADROOM) {
      // fixmap
      start = HEADROOM - kv.byteLength;
      this.buffer[start] = 0x80 | (count + 1);
      kv.copy(this.buffer, start + 1, 1);
    } else if (kv[0] === 0xde && kv.readUInt16BE(1) === count && count + 1 <= 0xffff && kv.byteLength <= HEADROOM) {
      // map16 (msgpackr's default for objects)
      start = HEADROOM - kv.byteLength;
      this.buffer[start] = 0xde;
      this.buffer.writeUInt16BE(count + 1, start + 1);
      kv.copy(this.buffer, start + 3, 3);
    } else {
      return packMsg(fields);
    }
    this.buffer[HEADROOM] = 0xa4; // fixstr of 4: "data"
    this.buffer.write('data', HEADROOM + 1, 'latin1');
    this.buffer[HEADROOM + 5] = 0xc6; // bin32
    this.buffer.writeUInt32BE(this.data.byteLength, HEADROOM + 6);
    return this.buffer.subarray(start, end);
  }
}

export interface ChunkPublishOptions {
  chunkBytes: number;
  /** QoS 1 publishes awaiting PUBACK at once. */
  maxInflight: number;
  retain: boolean;
  /** Only these sequence numbers (a resend); default all. */
  only?: readonly number[];
  signal?: AbortSignal;
  /** Called after each chunk's PUBACK with its byte count. */
  onChunkSent?: (bytes: number) => void;
  /** Sees each chunk's bytes in publishing order (ascending seq), e.g. to hash a full pass. */
  onChunk?: (seq: number, data: Uint8Array) => void;
  /**
   * Resolves when the `index`-th chunk of this pass (0-based) may be published: end-to-end flow
   * control on top of the broker's PUBACK window (see edge-agent/uplink.ts).
   */
  waitForCredit?: (index: number) => Promise<void>;
}

/**
 * Publish a bundle as chunks with a bounded window of QoS 1 publishes in flight: each chunk is
 * read from the source and encoded only when a slot frees up, so memory stays at `maxInflight`
 * chunks whatever the size of the bundle, and the bundle never has to be in memory as a whole.
 * MQTT.js does not window QoS 1 publishes by itself: it queues every publish it is handed.
 */
export async function publishChunks(
  transport: Transport,
  bundle: Uint8Array | BundleSource,
  topicFor: (seq: number) => string,
  envelope: (chunk: Chunk) => Record<string, unknown>,
  options: ChunkPublishOptions,
): Promise<void> {
  const source = isBundleSource(bundle) ? bundle : memorySource(bundle);
  const { chunkBytes, signal } = options;
  const bundleBytes = source.byteLength;
  const total = chunkCount(bundleBytes, chunkBytes);
  const seqs = options.only ? [...new Set(options.only)].filter((s) => s >= 0 && s < total).sort((a, b) => a - b) : null;
  const count = seqs ? seqs.length : total;
  const running = new Set<Promise<void>>();
  const pool: Buffer[] = [];
  const bufferBytes = HEADROOM + DATA_PREFIX + Math.min(chunkBytes, Math.max(1, bundleBytes));
  let failure: unknown = null;
  for (let index = 0; index < count; index++) {
    if (failure) break;
    if (signal?.aborted) throw signal.reason;
    await options.waitForCredit?.(index);
    if (signal?.aborted) throw signal.reason;
    const seq = seqs ? seqs[index]! : index;
    const n = chunkLength(seq, bundleBytes, chunkBytes);
    const buffer = pool.pop() ?? Buffer.allocUnsafeSlow(bufferBytes);
    const message = new ChunkMessage(buffer, n);
    await source.read(seq * chunkBytes, message.data);
    options.onChunk?.(seq, message.data);
    const payload = message.finish(envelope({ seq, total, bundleBytes, chunkBytes, crc32: crc32(message.data), data: message.data }));
    const p: Promise<void> = transport.publish(topicFor(seq), payload, { qos: 1, retain: options.retain }).then(
      () => {
        running.delete(p);
        // Acknowledged by the broker: MQTT.js holds the message no longer (QoS 1, MQTT 3.1.1 §4.3.2).
        pool.push(buffer);
        options.onChunkSent?.(n);
      },
      (err) => {
        running.delete(p);
        failure ??= err;
      },
    );
    running.add(p);
    if (running.size >= options.maxInflight) await Promise.race(running);
  }
  await Promise.all(running);
  if (failure) throw failure;
}
