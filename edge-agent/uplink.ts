import { createHash, randomBytes } from 'node:crypto';
import { isBundleSource, memorySource, type BundleSource } from '../shared/bundle/bundle-source.js';
import { publishChunks } from '../shared/bundle/chunk-publisher.js';
import { chunkCount } from '../shared/bundle/chunking.js';
import { decodeMsgpack, packMsg } from '../shared/protocol/wire-codec.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { ackSchema, PROTOCOL_VERSION, SUPPORTED_VERSIONS, type AckMsg } from '../shared/protocol/messages.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { InboundMessage, Transport } from '../shared/transport/transport.js';

export interface UplinkOptions {
  round: number;
  agent: string;
  chunkBytes: number;
  maxInflight: number;
  /** Wait this long for a verdict before asking again, ms; also the longest wait for flow-control credit. */
  ackTimeoutMs: number;
  /**
   * End-to-end flow control (the round's `windowChunks`): publish at most this many chunks beyond
   * those the aggregator reported stored; its progress acks may change it. 0: only the broker's
   * PUBACK window applies.
   */
  windowChunks?: number;
  signal?: AbortSignal;
  /** The aggregator may already hold part of this bundle (a restart mid-upload): ask first, send only what it lacks. Needs `upload` and `sha256`. */
  resume?: boolean;
  /** The upload id to use (a resumed upload keeps its id); default a fresh random one. */
  upload?: string;
  /** The bundle's SHA-256 when already known (saved for a restart); otherwise it is computed while the chunks go out. */
  sha256?: string;
  onProgress?: (sentBytes: number, totalBytes: number) => void;
  onReject?: (err: unknown, topic: string) => void;
}

export interface UplinkResult {
  ack: AckMsg;
  /** Bytes of chunk payload published, resends included. */
  sentBytes: number;
  resentChunks: number;
  sha256: string;
  upload: string;
  /** Times the flow-control window was full and the sender waited for the aggregator. */
  creditWaits: number;
  /** Of those waits, how many ended without credit (no progress ack within ackTimeoutMs). */
  creditTimeouts: number;
}

const VERDICT = Symbol('verdict');

/**
 * Send an update bundle: all chunks with a bounded window of QoS 1 publishes (hashing them on the
 * way, so the SHA-256 costs no pass of its own), then `update-done` with the SHA-256, asking for a
 * verdict. The aggregator answers accepted, rejected, or incomplete with the missing chunk
 * numbers; only those are sent again. No answer within ackTimeoutMs (the aggregator was
 * restarting, the link dropped): ask again. Ends on accepted or rejected, or when `signal`
 * aborts. A verdict that arrives while chunks are still going out (the header was refused) ends
 * the upload at once.
 *
 * With `windowChunks`, the sender also waits for the aggregator's `progress` acks, so that a slow
 * aggregator (ten agents sending at once) holds back the senders instead of filling the broker:
 * MQTT's PUBACK only says the broker has a message, and a broker such as Mosquitto acknowledges
 * before the subscriber has read it.
 */
export async function sendUpdate(transport: Transport, topics: Topics, update: Uint8Array | BundleSource, log: Logger, options: UplinkOptions): Promise<UplinkResult> {
  const { round, agent, chunkBytes, maxInflight, signal } = options;
  const source = isBundleSource(update) ? update : memorySource(update);
  const bundleBytes = source.byteLength;
  const total = chunkCount(bundleBytes, chunkBytes);
  const upload = options.upload ?? randomBytes(8).toString('hex');
  let window = options.windowChunks ?? 0;
  const ackTopic = topics.ack(round, agent);
  const updateTopic = topics.update(round, agent);
  let sentBytes = 0;
  let resentChunks = 0;
  let creditWaits = 0;
  let creditTimeouts = 0;
  let stored = 0;
  let verdictDuringSend: AckMsg | null = null;
  const stopSending = new AbortController();
  const acks: AckMsg[] = [];
  let wake: (() => void) | null = null;
  let creditWake: (() => void) | null = null;
  /** A credit wait timed out: send on without flow control until the next progress ack (no crawl of one chunk per timeout). */
  let creditLost = false;
  const onAck = (m: InboundMessage) => {
    try {
      const ack = decodeMsgpack(m.payload, ackSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'ack' });
      if (ack.round !== round || ack.agent !== agent) throw new FedlineError(ErrorCodes.MSG_TOPIC, `ack for round ${ack.round}/${ack.agent} on ${m.topic}`);
      if (ack.upload !== null && ack.upload !== upload) return; // about an earlier upload
      if (ack.status === 'progress') {
        stored = Math.max(stored, ack.stored);
        // The aggregator shares one window among the agents sending at the moment.
        if (window > 0 && ack.window > 0) window = ack.window;
        creditLost = false;
        creditWake?.();
        return;
      }
      if (ack.status === 'accepted' || ack.status === 'rejected') {
        verdictDuringSend ??= ack;
        stopSending.abort(VERDICT);
      }
      acks.push(ack);
      wake?.();
    } catch (err) {
      options.onReject?.(err, m.topic);
    }
  };
  const waitForCredit = async (index: number): Promise<void> => {
    if (window <= 0 || creditLost || index - stored < window) return;
    creditWaits++;
    const started = Date.now();
    while (index - stored >= window && !stopSending.signal.aborted && !signal?.aborted) {
      const left = options.ackTimeoutMs - (Date.now() - started);
      if (left <= 0) {
        // Progress acks lost or an aggregator without flow control: go on; resends repair any loss.
        log.warn({ round, index, stored, window }, 'no progress from the aggregator; sending on without flow-control credit until it reports again');
        creditLost = true;
        creditTimeouts++;
        return;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        function done() {
          clearTimeout(timer);
          creditWake = null;
          resolve();
        }
        creditWake = done;
      });
    }
  };
  const sendSignal = signal ? AbortSignal.any([signal, stopSending.signal]) : stopSending.signal;
  const send = (only?: readonly number[], hash?: ReturnType<typeof createHash>) =>
    publishChunks(
      transport,
      source,
      () => updateTopic,
      (chunk) => ({ v: PROTOCOL_VERSION, type: 'update-chunk', round, agent, upload, ...chunk }),
      {
        chunkBytes,
        maxInflight,
        retain: false,
        ...(only ? { only } : { waitForCredit }),
        ...(hash ? { onChunk: (_seq: number, data: Uint8Array) => hash.update(data) } : {}),
        signal: sendSignal,
        onChunkSent: (n) => {
          sentBytes += n;
          options.onProgress?.(sentBytes, bundleBytes);
        },
      },
    );
  const nextAck = (timeoutMs: number) =>
    new Promise<AckMsg | null>((resolve, reject) => {
      if (acks.length) return resolve(acks.shift()!);
      const timer = setTimeout(() => {
        wake = null;
        signal?.removeEventListener('abort', onAbort);
        resolve(null);
      }, timeoutMs);
      const onAbort = () => {
        clearTimeout(timer);
        wake = null;
        reject(signal!.reason ?? new FedlineError(ErrorCodes.ABORTED, 'upload aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      wake = () => {
        clearTimeout(timer);
        wake = null;
        signal?.removeEventListener('abort', onAbort);
        resolve(acks.shift()!);
      };
    });
  /** Run a pass; a verdict arriving meanwhile ends it early (not an error). */
  const pass = async (only?: readonly number[], hash?: ReturnType<typeof createHash>): Promise<boolean> => {
    try {
      await send(only, hash);
      return true;
    } catch (err) {
      if (stopSending.signal.aborted && !signal?.aborted) return false;
      throw err;
    }
  };

  await transport.subscribe(ackTopic, onAck);
  try {
    let sha256 = options.sha256 ?? null;
    let finished = true;
    if (!options.resume) {
      const hash = sha256 === null ? createHash('sha256') : undefined;
      finished = await pass(undefined, hash);
      sha256 ??= hash!.digest('hex');
    } else if (sha256 === null) {
      throw new Error('resuming an upload needs its SHA-256');
    }
    if (!finished && verdictDuringSend) {
      const ack: AckMsg = verdictDuringSend;
      log.info({ round, status: ack.status, code: ack.code }, 'verdict arrived while sending; upload ended');
      return { ack, sentBytes, resentChunks, sha256, upload, creditWaits, creditTimeouts };
    }
    for (;;) {
      if (signal?.aborted) throw signal.reason ?? new FedlineError(ErrorCodes.ABORTED, 'upload aborted');
      await transport.publish(updateTopic, packMsg({ v: PROTOCOL_VERSION, type: 'update-done', round, agent, upload, total, bundleBytes, sha256 }), { qos: 1 });
      const ack = await nextAck(options.ackTimeoutMs);
      if (!ack) {
        log.warn({ round, timeoutMs: options.ackTimeoutMs }, 'no verdict from the aggregator yet; asking again');
        continue;
      }
      if (ack.status === 'accepted' || ack.status === 'rejected') return { ack, sentBytes, resentChunks, sha256, upload, creditWaits, creditTimeouts };
      const missing = ack.missing.filter((s) => s >= 0 && s < total);
      if (missing.length) {
        log.info({ round, missing: missing.length }, 'aggregator is missing chunks; resending them');
        resentChunks += missing.length;
        if (!(await pass(missing)) && verdictDuringSend) return { ack: verdictDuringSend, sentBytes, resentChunks, sha256, upload, creditWaits, creditTimeouts };
      }
    }
  } finally {
    (creditWake as (() => void) | null)?.();
    await transport.unsubscribe(ackTopic, onAck).catch(() => undefined);
  }
}
