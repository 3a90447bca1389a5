import { Reassembler } from '../shared/chunking.js';
import { decodeMsgpack } from '../shared/codec.js';
import { describeError, ErrorCodes, FedlineError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { modelChunkSchema, SUPPORTED_VERSIONS, type ModelRef } from '../shared/messages.js';
import type { Topics } from '../shared/topics.js';
import type { InboundMessage, Transport } from '../shared/transport.js';

export interface DownloadOptions {
  maxModelBytes: number;
  /** Resubscribe (retained chunks are sent again) after this long without a new chunk, ms. */
  stallMs: number;
  signal?: AbortSignal;
  onProgress?: (receivedChunks: number, total: number) => void;
  onReject?: (err: unknown, topic: string) => void;
}

/**
 * Fetch a global model from its retained chunks (`<root>/model/<version>/+`): subscribe, let the
 * broker replay them, reassemble in any order, verify the SHA-256 the round announced, unsubscribe.
 * A stalled download resubscribes, which makes the broker send the retained chunks again; only the
 * missing ones are kept.
 */
export async function downloadModel(transport: Transport, topics: Topics, ref: ModelRef, log: Logger, options: DownloadOptions): Promise<Buffer> {
  const assembler = new Reassembler({ total: ref.chunks, bundleBytes: ref.bytes, chunkBytes: ref.chunkBytes, sha256: ref.sha256, maxBundleBytes: options.maxModelBytes });
  const filter = topics.modelChunks(ref.version);
  return new Promise<Buffer>((resolve, reject) => {
    let stallTimer: NodeJS.Timeout | undefined;
    let settled = false;
    const finish = (err: unknown, value?: Buffer) => {
      if (settled) return;
      settled = true;
      clearTimeout(stallTimer);
      options.signal?.removeEventListener('abort', onAbort);
      transport.unsubscribe(filter, onChunk).catch(() => undefined);
      if (err) reject(err);
      else resolve(value!);
    };
    const armStall = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(async () => {
        if (settled) return;
        log.warn({ version: ref.version, have: assembler.receivedChunks, total: ref.chunks }, 'model download stalled; asking the broker for the retained chunks again');
        try {
          await transport.unsubscribe(filter, onChunk);
          await transport.subscribe(filter, onChunk);
        } catch (err) {
          log.warn({ err: describeError(err).message }, 'resubscribe failed');
        }
        armStall();
      }, options.stallMs);
    };
    const onAbort = () => finish(options.signal!.reason ?? new FedlineError(ErrorCodes.ABORTED, 'download aborted'));
    const onChunk = (m: InboundMessage) => {
      if (settled || m.payload.byteLength === 0) return; // empty retained payload: a cleared chunk
      try {
        const msg = decodeMsgpack(m.payload, modelChunkSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'model chunk' });
        const where = topics.parseModelChunk(m.topic);
        if (!where || where.version !== msg.version || where.seq !== msg.seq || msg.version !== ref.version) {
          throw new FedlineError(ErrorCodes.MSG_TOPIC, `model chunk ${msg.version}/${msg.seq} arrived on ${m.topic}`);
        }
        if (assembler.accept(msg) === 'added') {
          armStall();
          options.onProgress?.(assembler.receivedChunks, assembler.total);
        }
        if (assembler.complete) finish(null, assembler.finish());
      } catch (err) {
        if ((err as FedlineError).code === ErrorCodes.BUNDLE_SHA) return finish(err);
        options.onReject?.(err, m.topic);
      }
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    armStall();
    transport.subscribe(filter, onChunk).catch((err) => finish(err));
  });
}
