import { Reassembler, type ChunkReassembly } from '../shared/bundle/reassembly.js';
import { decodeMsgpack } from '../shared/protocol/wire-codec.js';
import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { FileReassembler } from '../shared/bundle/file-reassembler.js';
import type { Logger } from '../shared/util/logger.js';
import { controlChunkSchema, modelChunkSchema, SUPPORTED_VERSIONS, type ModelRef } from '../shared/protocol/messages.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { InboundMessage, Transport } from '../shared/transport/transport.js';

export interface DownloadOptions {
  maxModelBytes: number;
  /** Resubscribe (retained chunks are sent again) after this long without a new chunk, ms. */
  stallMs: number;
  signal?: AbortSignal;
  onProgress?: (receivedChunks: number, total: number) => void;
  onReject?: (err: unknown, topic: string) => void;
}

/** What is downloaded: the model's chunks or SCAFFOLD's control variate's (same framing, own topics and message type). */
interface Channel {
  what: 'model' | 'control';
  filter: string;
  parse(topic: string): { version: number; seq: number } | null;
  /** Decodes one chunk message (model-chunk or control-chunk): the fields both share. */
  decode(payload: Uint8Array, topic: string): { version: number; seq: number; sha256: string } & Parameters<ChunkReassembly['accept']>[0];
}

const modelChannel = (topics: Topics, version: number): Channel => ({
  what: 'model',
  filter: topics.modelChunks(version),
  parse: (t) => topics.parseModelChunk(t),
  decode: (payload, topic) => decodeMsgpack(payload, modelChunkSchema, SUPPORTED_VERSIONS, { topic, what: 'model chunk' }),
});

/** Where chunks come from and where problems are logged. */
interface Link {
  channel: Channel;
  transport: Transport;
  log: Logger;
}

interface Assembly<T> {
  /** What receives the chunks: the in-memory Reassembler or the FileReassembler. */
  sink: ChunkReassembly;
  /** Every chunk is in: check the whole and hand it over. */
  finish(): Promise<T>;
  /** The download failed: drop what was received. */
  abandon(): void;
}

/** Fetch a global model into memory (small models, tests). See downloadModelToFile for large ones. */
export function downloadModel(transport: Transport, topics: Topics, ref: ModelRef, log: Logger, options: DownloadOptions): Promise<Buffer> {
  const r = new Reassembler({
    total: ref.chunks,
    bundleBytes: ref.bytes,
    chunkBytes: ref.chunkBytes,
    sha256: ref.sha256,
    maxBundleBytes: options.maxModelBytes,
  });
  return download({ channel: modelChannel(topics, ref.version), transport, log }, ref, options, {
    sink: r,
    finish: async () => r.finish(),
    abandon: () => undefined,
  });
}

/**
 * Fetch SCAFFOLD's server variate c (announcement `control`) into memory: retained chunks on
 * `<root>/model/<version>/control/+`, checked like the model's (CRC32 per chunk, SHA-256 as a whole).
 */
export function downloadControl(
  transport: Transport,
  topics: Topics,
  ref: Omit<ModelRef, 'signature'>,
  log: Logger,
  options: DownloadOptions,
): Promise<Buffer> {
  const r = new Reassembler({
    total: ref.chunks,
    bundleBytes: ref.bytes,
    chunkBytes: ref.chunkBytes,
    sha256: ref.sha256,
    maxBundleBytes: options.maxModelBytes,
  });
  const channel: Channel = {
    what: 'control',
    filter: topics.controlChunks(ref.version),
    parse: (t) => topics.parseControlChunk(t),
    decode: (payload, topic) => decodeMsgpack(payload, controlChunkSchema, SUPPORTED_VERSIONS, { topic, what: 'control chunk' }),
  };
  return download({ channel, transport, log }, ref, options, { sink: r, finish: async () => r.finish(), abandon: () => undefined });
}

/**
 * Fetch a global model straight into a file (`path`), checked chunk by chunk (CRC32) and as a
 * whole (SHA-256, hashed while it arrives): memory stays at a chunk whatever the model's size.
 * On any failure the file is deleted.
 */
export function downloadModelToFile(transport: Transport, topics: Topics, ref: ModelRef, path: string, log: Logger, options: DownloadOptions): Promise<string> {
  const r = new FileReassembler({
    path,
    total: ref.chunks,
    bundleBytes: ref.bytes,
    chunkBytes: ref.chunkBytes,
    maxBundleBytes: options.maxModelBytes,
    syncEveryBytes: 0,
  });
  return download({ channel: modelChannel(topics, ref.version), transport, log }, ref, options, {
    sink: r,
    finish: () => r.finish(ref.sha256),
    abandon: () => r.discard(),
  });
}

/**
 * Chunks are taken as borrowed views of the transport's receive buffer (no Buffer per chunk): the
 * handler below is synchronous up to the sink's accept(), which copies the bytes (into the file or
 * the in-memory bundle) before it returns.
 */
const BORROWED = { borrowed: true } as const;

/**
 * Subscribe to the model's retained chunks (`<root>/model/<version>/+`), let the broker replay
 * them, reassemble in any order, verify the SHA-256 the round announced, unsubscribe. A stalled
 * download resubscribes, which makes the broker send the retained chunks again; only the missing
 * ones are kept.
 */
function download<T>(link: Link, ref: Omit<ModelRef, 'signature'>, options: DownloadOptions, assembler: Assembly<T>): Promise<T> {
  const { channel, transport, log } = link;
  const { filter, what } = channel;
  return new Promise<T>((resolve, reject) => {
    let stallTimer: NodeJS.Timeout | undefined;
    let settled = false;
    /** Every chunk is in and the SHA-256 is being checked: later (duplicate) chunks are ignored. */
    let finishing = false;
    const finish = (err: unknown, value?: T) => {
      if (settled) return;
      settled = true;
      clearTimeout(stallTimer);
      options.signal?.removeEventListener('abort', onAbort);
      transport.unsubscribe(filter, onChunk).catch(() => undefined);
      if (err) {
        assembler.abandon();
        reject(err);
      } else resolve(value!);
    };
    const armStall = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(async () => {
        if (settled) return;
        log.warn(
          { version: ref.version, have: assembler.sink.receivedChunks, total: ref.chunks },
          `${what} download stalled; asking the broker for the retained chunks again`,
        );
        try {
          await transport.unsubscribe(filter, onChunk);
          await transport.subscribe(filter, onChunk, BORROWED);
        } catch (err) {
          log.warn({ err: describeError(err).message }, 'resubscribe failed');
        }
        armStall();
      }, options.stallMs);
    };
    const onAbort = () => finish(options.signal!.reason ?? new FedlineError(ErrorCodes.ABORTED, 'download aborted'));
    const onChunk = (m: InboundMessage) => {
      if (settled || finishing || m.payload.byteLength === 0) return; // empty retained payload: a cleared chunk
      try {
        const msg = channel.decode(m.payload, m.topic);
        const where = channel.parse(m.topic);
        if (!where || where.version !== msg.version || where.seq !== msg.seq || msg.version !== ref.version) {
          throw new FedlineError(ErrorCodes.MSG_TOPIC, `${what} chunk ${msg.version}/${msg.seq} arrived on ${m.topic}`);
        }
        if (msg.sha256 !== ref.sha256)
          throw new FedlineError(
            ErrorCodes.CHUNK_MISMATCH,
            `${what} chunk ${msg.seq} is of a bundle with SHA-256 ${msg.sha256.slice(0, 12)}…, the round announced ${ref.sha256.slice(0, 12)}…`,
          );
        if (assembler.sink.accept(msg) === 'added') {
          armStall();
          options.onProgress?.(assembler.sink.receivedChunks, assembler.sink.total);
        }
        if (assembler.sink.complete) {
          finishing = true;
          clearTimeout(stallTimer);
          assembler.finish().then(
            (value) => finish(null, value),
            (err) => finish(err),
          );
        }
      } catch (err) {
        if ((err as FedlineError).code === ErrorCodes.BUNDLE_SHA) return finish(err);
        // The local disk refused a write (full, read-only, failing): not the message's fault, and
        // no later chunk will fare better. Stop; the caller decides (fetchModelBundle: memory).
        if ((err as NodeJS.ErrnoException).syscall) return finish(err);
        options.onReject?.(err, m.topic);
      }
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    armStall();
    transport.subscribe(filter, onChunk, BORROWED).catch((err) => finish(err));
  });
}
