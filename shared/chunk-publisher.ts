import { crc32 } from 'node:zlib';
import { isBundleSource, memorySource, type BundleSource } from './bundle-source.js';
import { chunkCount, chunkLength, type Chunk } from './chunking.js';
import { packMsg } from './codec.js';
import type { Transport } from './transport.js';

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
  // One read buffer: packMsg copies the bytes into the message, so it can be reused at once.
  const scratch = Buffer.allocUnsafeSlow(Math.min(chunkBytes, Math.max(1, bundleBytes)));
  const running = new Set<Promise<void>>();
  let failure: unknown = null;
  for (let index = 0; index < count; index++) {
    if (failure) break;
    if (signal?.aborted) throw signal.reason;
    await options.waitForCredit?.(index);
    if (signal?.aborted) throw signal.reason;
    const seq = seqs ? seqs[index]! : index;
    const n = chunkLength(seq, bundleBytes, chunkBytes);
    const data = scratch.subarray(0, n);
    await source.read(seq * chunkBytes, data);
    options.onChunk?.(seq, data);
    const payload = packMsg(envelope({ seq, total, bundleBytes, chunkBytes, crc32: crc32(data), data }));
    const p: Promise<void> = transport.publish(topicFor(seq), payload, { qos: 1, retain: options.retain }).then(
      () => {
        running.delete(p);
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
