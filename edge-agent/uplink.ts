import { publishChunks } from '../shared/chunk-publisher.js';
import { decodeMsgpack, packMsg } from '../shared/codec.js';
import { ErrorCodes, FedlineError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { ackSchema, PROTOCOL_VERSION, SUPPORTED_VERSIONS, type AckMsg } from '../shared/messages.js';
import { chunkCount } from '../shared/chunking.js';
import { sha256Hex } from '../shared/tensor-bundle.js';
import type { Topics } from '../shared/topics.js';
import type { InboundMessage, Transport } from '../shared/transport.js';

export interface UplinkOptions {
  round: number;
  agent: string;
  chunkBytes: number;
  maxInflight: number;
  /** Wait this long for a verdict before asking again, ms. */
  ackTimeoutMs: number;
  signal?: AbortSignal;
  /** The aggregator may already hold part of this bundle (a restart mid-upload): ask first, send only what it lacks. */
  resume?: boolean;
  onProgress?: (sentBytes: number, totalBytes: number) => void;
  onReject?: (err: unknown, topic: string) => void;
}

export interface UplinkResult {
  ack: AckMsg;
  /** Bytes of chunk payload published, resends included. */
  sentBytes: number;
  resentChunks: number;
}

/**
 * Send an update bundle: all chunks with a bounded window of QoS 1 publishes, then `update-done`
 * asking for a verdict. The aggregator answers accepted, rejected, or incomplete with the missing
 * chunk numbers; only those are sent again. No answer within ackTimeoutMs (the aggregator was
 * restarting, the link dropped): ask again. Ends on accepted or rejected, or when `signal` aborts.
 */
export async function sendUpdate(transport: Transport, topics: Topics, bundle: Uint8Array, log: Logger, options: UplinkOptions): Promise<UplinkResult> {
  const { round, agent, chunkBytes, maxInflight, signal } = options;
  const sha256 = sha256Hex(bundle);
  const total = chunkCount(bundle.byteLength, chunkBytes);
  const ackTopic = topics.ack(round, agent);
  const updateTopic = topics.update(round, agent);
  let sentBytes = 0;
  let resentChunks = 0;
  const acks: AckMsg[] = [];
  let wake: (() => void) | null = null;
  const onAck = (m: InboundMessage) => {
    try {
      const ack = decodeMsgpack(m.payload, ackSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'ack' });
      if (ack.round !== round || ack.agent !== agent) throw new FedlineError(ErrorCodes.MSG_TOPIC, `ack for round ${ack.round}/${ack.agent} on ${m.topic}`);
      if (ack.sha256 !== null && ack.sha256 !== sha256) return; // a verdict on an earlier bundle
      acks.push(ack);
      wake?.();
    } catch (err) {
      options.onReject?.(err, m.topic);
    }
  };
  const send = (only?: readonly number[]) =>
    publishChunks(
      transport,
      bundle,
      () => updateTopic,
      (chunk) => ({ v: PROTOCOL_VERSION, type: 'update-chunk', round, agent, ...chunk }),
      {
        chunkBytes,
        maxInflight,
        retain: false,
        sha256,
        ...(only ? { only } : {}),
        ...(signal ? { signal } : {}),
        onChunkSent: (n) => {
          sentBytes += n;
          options.onProgress?.(sentBytes, bundle.byteLength);
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

  await transport.subscribe(ackTopic, onAck);
  try {
    if (!options.resume) await send();
    for (;;) {
      if (signal?.aborted) throw signal.reason ?? new FedlineError(ErrorCodes.ABORTED, 'upload aborted');
      await transport.publish(updateTopic, packMsg({ v: PROTOCOL_VERSION, type: 'update-done', round, agent, total, sha256 }), { qos: 1 });
      const ack = await nextAck(options.ackTimeoutMs);
      if (!ack) {
        log.warn({ round, timeoutMs: options.ackTimeoutMs }, 'no verdict from the aggregator yet; asking again');
        continue;
      }
      if (ack.status === 'accepted' || ack.status === 'rejected') return { ack, sentBytes, resentChunks };
      const missing = ack.missing.filter((s) => s >= 0 && s < total);
      if (missing.length) {
        log.info({ round, missing: missing.length }, 'aggregator is missing chunks; resending them');
        resentChunks += missing.length;
        await send(missing);
      }
    }
  } finally {
    await transport.unsubscribe(ackTopic, onAck).catch(() => undefined);
  }
}
