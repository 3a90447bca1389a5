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
import { UploadCredit } from './upload-credit.js';

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
  /** Times the flow-control credit was used up and the sender waited for the aggregator. */
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
 * restarting, the link dropped): ask again. Each query carries its number (`query`), which the
 * aggregator echoes, so that a stale `incomplete` answer (to a query sent before the last resend)
 * resends nothing twice. Ends on accepted or rejected, or when `signal`
 * aborts. A verdict that arrives while chunks are still going out (the header was refused) ends
 * the upload at once.
 *
 * With `windowChunks`, the sender also waits for the aggregator's `progress` acks, so that a slow
 * aggregator (ten agents sending at once) holds back the senders instead of filling the broker
 * (edge-agent/upload-credit.ts).
 */
export async function sendUpdate(
  transport: Transport,
  topics: Topics,
  update: Uint8Array | BundleSource,
  log: Logger,
  options: UplinkOptions,
): Promise<UplinkResult> {
  return new UpdateUpload(transport, topics, isBundleSource(update) ? update : memorySource(update), log, options).run();
}

type Hash = ReturnType<typeof createHash>;

/** One upload's state: the acks it waits for, the flow-control credit, the bytes sent. */
class UpdateUpload {
  private readonly round: number;
  private readonly agent: string;
  private readonly signal: AbortSignal | undefined;
  private readonly bundleBytes: number;
  private readonly total: number;
  private readonly upload: string;
  private readonly ackTopic: string;
  private readonly updateTopic: string;
  private readonly credit: UploadCredit;
  private sentBytes = 0;
  private resentChunks = 0;
  /** A verdict that came while chunks were going out; it stops the sending. */
  private verdictDuringSend: AckMsg | null = null;
  private readonly stopSending = new AbortController();
  private readonly sendSignal: AbortSignal;
  private readonly acks: AckMsg[] = [];
  /**
   * Chunks the aggregator refused on arrival (`incomplete` with a code: a CRC mismatch), to resend
   * before the next `update-done`. Such a notice answers no `update-done`; taken as the answer to
   * the one just sent, it made the agent resend the chunk, ask again, and resend it a second time
   * when the real answer (given before the resend arrived) listed it too.
   */
  private readonly damaged = new Set<number>();
  /** Verdict queries (`update-done`) sent so far; each carries its number as `query`. */
  private queries = 0;
  /**
   * Queries answered in effect: handling an `incomplete` answer resends every chunk it lists, which
   * also answers every query sent before it. A later `incomplete` echoing a number up to this one
   * was given before that resend arrived and lists the same chunks: resending them again was the
   * duplicate resends under load (issue 14).
   */
  private answeredQueries = 0;
  private wake: (() => void) | null = null;
  /** The bundle's SHA-256 read ahead of the first pass's end (bundleSha). */
  private sha: Promise<string> | null = null;

  constructor(
    private readonly transport: Transport,
    topics: Topics,
    private readonly source: BundleSource,
    private readonly log: Logger,
    private readonly options: UplinkOptions,
  ) {
    this.round = options.round;
    this.agent = options.agent;
    this.signal = options.signal;
    this.bundleBytes = source.byteLength;
    this.total = chunkCount(this.bundleBytes, options.chunkBytes);
    this.upload = options.upload ?? randomBytes(8).toString('hex');
    this.ackTopic = topics.ack(this.round, this.agent);
    this.updateTopic = topics.update(this.round, this.agent);
    this.credit = new UploadCredit(options.windowChunks ?? 0, options.ackTimeoutMs, log, this.round, (index) => this.creditStalled(index));
    this.sendSignal = this.signal ? AbortSignal.any([this.signal, this.stopSending.signal]) : this.stopSending.signal;
  }

  async run(): Promise<UplinkResult> {
    await this.transport.subscribe(this.ackTopic, this.onAck);
    try {
      const first = await this.firstPass();
      if (!first.finished && this.verdictDuringSend) {
        const ack: AckMsg = this.verdictDuringSend;
        this.log.info({ round: this.round, status: ack.status, code: ack.code }, 'verdict arrived while sending; upload ended');
        return this.result(ack, first.sha256);
      }
      return await this.settle(first.sha256);
    } finally {
      this.credit.release();
      await this.transport.unsubscribe(this.ackTopic, this.onAck).catch(() => undefined);
    }
  }

  /** Every chunk, hashed on the way unless the SHA-256 is known; none when resuming (the aggregator says what it lacks). */
  private async firstPass(): Promise<{ finished: boolean; sha256: string }> {
    const known = this.options.sha256 ?? null;
    if (this.options.resume) {
      if (known === null)
        throw new FedlineError(ErrorCodes.MODEL_STORE, 'resuming an upload needs its SHA-256 (from the update journal)', {
          round: this.round,
          upload: this.upload,
        });
      return { finished: true, sha256: known };
    }
    const hash = known === null ? createHash('sha256') : undefined;
    const finished = await this.pass(undefined, hash);
    return { finished, sha256: known ?? hash!.digest('hex') };
  }

  /**
   * A wait for credit had no progress ack for ackTimeoutMs. Sending on without a bound was the
   * old answer; with a hundred agents doing so the broker held gigabytes, and when the aggregator
   * had lost its connection (the chunks in flight gone, so no progress could ever come) each of
   * them waited a whole timeout per window. Instead ask the aggregator where the upload stands
   * (an update-done query, which needs the bundle's SHA-256: one extra pass over the bundle, only
   * here): chunks it lacks below `index` were lost on the way (the query went out after them on
   * the same topic, and MQTT keeps their order), so they go again, and the answer says how many
   * it holds. True (send on without credit) only when this upload has had no progress ack at all:
   * that aggregator does no flow control. No answer: wait and ask again (restarting, unreachable).
   */
  private async creditStalled(index: number): Promise<boolean> {
    const ack = await this.ask(await this.bundleSha());
    if (!ack) {
      this.log.warn({ round: this.round, index, timeoutMs: this.options.ackTimeoutMs }, 'no progress and no answer from the aggregator; asking again');
      return false;
    }
    if (ack.status !== 'incomplete') return false; // a verdict: onAck has stopped the sending
    const lost = ack.missing.filter((s) => s >= 0 && s < index);
    this.credit.learned(index - lost.length);
    if (lost.length) {
      this.log.warn({ round: this.round, lost: lost.length, index }, 'the aggregator lacks chunks sent before; resending them');
      this.resentChunks += lost.length;
      await this.pass(lost);
    }
    return !this.credit.heardProgress;
  }

  /** The SHA-256 of the whole bundle, read once from the source (the first pass hashes on the way; a query before its end needs it earlier). */
  private bundleSha(): Promise<string> {
    this.sha ??= (async () => {
      const hash = createHash('sha256');
      const block = new Uint8Array(Math.min(this.bundleBytes, 4 * 1024 * 1024));
      for (let offset = 0; offset < this.bundleBytes; offset += block.byteLength) {
        const part = block.subarray(0, Math.min(block.byteLength, this.bundleBytes - offset));
        await this.source.read(offset, part);
        hash.update(part);
      }
      return hash.digest('hex');
    })();
    return this.sha;
  }

  /**
   * Send an update-done query and wait for its answer (null: none within ackTimeoutMs). An
   * `incomplete` answer is taken as answering every query sent so far, since the caller resends
   * the chunks it lists.
   */
  private async ask(sha256: string): Promise<AckMsg | null> {
    const { round, agent, upload, total, bundleBytes } = this;
    const query = ++this.queries;
    const done = { v: PROTOCOL_VERSION, type: 'update-done', round, agent, upload, total, bundleBytes, sha256, query };
    await this.transport.publish(this.updateTopic, packMsg(done), { qos: 1 });
    const ack = await this.nextAnswer();
    if (ack?.status === 'incomplete') {
      // An older aggregator echoes no query: each of its answers is taken, as before.
      if (ack.query !== undefined) this.answeredQueries = this.queries;
      for (const s of ack.missing) this.damaged.delete(s);
    }
    return ack;
  }

  /** Ask for the verdict until accepted or rejected, resending the chunks the aggregator lacks. */
  private async settle(sha256: string): Promise<UplinkResult> {
    const { round, total, signal } = this;
    for (;;) {
      if (signal?.aborted) throw signal.reason ?? new FedlineError(ErrorCodes.ABORTED, 'upload aborted');
      if (this.damaged.size) {
        const again = [...this.damaged].sort((a, b) => a - b);
        this.damaged.clear();
        this.log.info({ round, chunks: again.length }, 'the aggregator refused chunks on arrival (CRC); resending them');
        this.resentChunks += again.length;
        if (!(await this.pass(again)) && this.verdictDuringSend) return this.result(this.verdictDuringSend, sha256);
      }
      const ack = await this.ask(sha256);
      if (!ack) {
        this.log.warn({ round, timeoutMs: this.options.ackTimeoutMs }, 'no verdict from the aggregator yet; asking again');
        continue;
      }
      if (ack.status === 'accepted' || ack.status === 'rejected') return this.result(ack, sha256);
      const missing = ack.missing.filter((s) => s >= 0 && s < total);
      if (missing.length) {
        this.log.info({ round, missing: missing.length }, 'aggregator is missing chunks; resending them');
        this.resentChunks += missing.length;
        if (!(await this.pass(missing)) && this.verdictDuringSend) return this.result(this.verdictDuringSend, sha256);
      }
    }
  }

  private result(ack: AckMsg, sha256: string): UplinkResult {
    return {
      ack,
      sentBytes: this.sentBytes,
      resentChunks: this.resentChunks,
      sha256,
      upload: this.upload,
      creditWaits: this.credit.waits,
      creditTimeouts: this.credit.timeouts,
    };
  }

  private readonly onAck = (m: InboundMessage): void => {
    try {
      const ack = decodeMsgpack(m.payload, ackSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'ack' });
      if (ack.round !== this.round || ack.agent !== this.agent)
        throw new FedlineError(ErrorCodes.MSG_TOPIC, `ack for round ${ack.round}/${ack.agent} on ${m.topic}`);
      if (ack.upload !== null && ack.upload !== this.upload) return; // about an earlier upload
      if (ack.status === 'progress') {
        // The wire field `window` is the credit the aggregator grants this sender now.
        this.credit.progress(ack.stored, ack.window);
        return;
      }
      if (ack.status === 'incomplete' && ack.code !== null) {
        // A notice, not an answer: the next answer would list the chunk anyway; resent before the next update-done.
        for (const s of ack.missing) if (s >= 0 && s < this.total) this.damaged.add(s);
        return;
      }
      if (ack.status === 'accepted' || ack.status === 'rejected') {
        this.verdictDuringSend ??= ack;
        this.stopSending.abort(VERDICT);
      }
      this.acks.push(ack);
      this.wake?.();
    } catch (err) {
      this.options.onReject?.(err, m.topic);
    }
  };

  /** Run a pass (all chunks, or `only` those); a verdict arriving meanwhile ends it early (false, not an error). */
  private async pass(only?: readonly number[], hash?: Hash): Promise<boolean> {
    try {
      await this.send(only, hash);
      return true;
    } catch (err) {
      if (this.stopSending.signal.aborted && !this.signal?.aborted) return false;
      throw err;
    }
  }

  private send(only?: readonly number[], hash?: Hash): Promise<void> {
    const { round, agent, upload } = this;
    const waitForCredit = (index: number) => this.credit.waitFor(index, this.stopSending.signal, this.signal);
    return publishChunks(
      this.transport,
      this.source,
      () => this.updateTopic,
      (chunk) => ({ v: PROTOCOL_VERSION, type: 'update-chunk', round, agent, upload, ...chunk }),
      {
        chunkBytes: this.options.chunkBytes,
        maxInflight: this.options.maxInflight,
        retain: false,
        ...(only ? { only } : { waitForCredit }),
        ...(hash ? { onChunk: (_seq: number, data: Uint8Array) => hash.update(data) } : {}),
        signal: this.sendSignal,
        onChunkSent: (n) => {
          this.sentBytes += n;
          this.options.onProgress?.(this.sentBytes, this.bundleBytes);
        },
      },
    );
  }

  /**
   * The answer to the newest query, or a verdict; null when none comes within ackTimeoutMs. An
   * `incomplete` echoing a query already answered in effect is stale: skipped (not an error), the
   * wait goes on for the rest of the time.
   */
  private async nextAnswer(): Promise<AckMsg | null> {
    const deadlineMs = performance.now() + this.options.ackTimeoutMs;
    for (;;) {
      const ack = await this.nextAck(Math.max(0, deadlineMs - performance.now()));
      if (!ack || ack.status !== 'incomplete' || ack.query === undefined || ack.query > this.answeredQueries) return ack;
      this.log.debug(
        { round: this.round, query: ack.query, answeredQueries: this.answeredQueries, newest: this.queries },
        'stale incomplete answer (its query was answered by a resend since); skipped',
      );
    }
  }

  /** The next verdict or incomplete ack; null after `timeoutMs` without one; rejects when the upload is aborted. */
  private nextAck(timeoutMs: number): Promise<AckMsg | null> {
    const signal = this.signal;
    return new Promise<AckMsg | null>((resolve, reject) => {
      if (this.acks.length) return resolve(this.acks.shift()!);
      const timer = setTimeout(() => {
        this.wake = null;
        signal?.removeEventListener('abort', onAbort);
        resolve(null);
      }, timeoutMs);
      const onAbort = () => {
        clearTimeout(timer);
        this.wake = null;
        reject(signal!.reason ?? new FedlineError(ErrorCodes.ABORTED, 'upload aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.wake = () => {
        clearTimeout(timer);
        this.wake = null;
        signal?.removeEventListener('abort', onAbort);
        resolve(this.acks.shift()!);
      };
    });
  }
}
