import { forEachWindowed } from './async.js';
import { splitIntoChunks, type Chunk } from './chunking.js';
import { packMsg } from './codec.js';
import type { Transport } from './transport.js';

export interface ChunkPublishOptions {
  chunkBytes: number;
  /** QoS 1 publishes awaiting PUBACK at once. */
  maxInflight: number;
  retain: boolean;
  sha256: string;
  /** Only these sequence numbers (a resend); default all. */
  only?: readonly number[];
  signal?: AbortSignal;
  /** Called after each chunk's PUBACK with its byte count. */
  onChunkSent?: (bytes: number) => void;
}

/**
 * Publish a bundle as chunks with a bounded window of QoS 1 publishes in flight: each chunk is
 * encoded only when a slot frees up, so memory stays at `maxInflight` chunks whatever the size.
 */
export async function publishChunks(
  transport: Transport,
  bundle: Uint8Array,
  topicFor: (seq: number) => string,
  envelope: (chunk: Chunk) => Record<string, unknown>,
  options: ChunkPublishOptions,
): Promise<void> {
  const only = options.only ? new Set(options.only) : null;
  const chunks = (function* () {
    for (const chunk of splitIntoChunks(bundle, options.chunkBytes, options.sha256)) if (!only || only.has(chunk.seq)) yield chunk;
  })();
  await forEachWindowed(
    chunks,
    options.maxInflight,
    async (chunk) => {
      await transport.publish(topicFor(chunk.seq), packMsg(envelope(chunk)), { qos: 1, retain: options.retain });
      options.onChunkSent?.(chunk.data.byteLength);
    },
    options.signal,
  );
}
