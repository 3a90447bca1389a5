import { dtypeOf } from '../shared/bundle/value-encodings.js';
import { describeError, ErrorCodes, FedlineError, isFedlineError } from '../shared/protocol/errors.js';
import type { UpdateChunkMsg, UpdateDoneMsg } from '../shared/protocol/messages.js';
import type { AggregatorContext } from './aggregator-context.js';
import type { StoredModel } from './model-store.js';
import { sampleLimit } from './robustness.js';
import type { RoundRecord } from './round-journal.js';
import type { RoundState } from './round-state.js';
import { UpdateReceiver } from './update-receiver.js';
import { derivedMaxUpdateBytes } from './verify-update.js';
import type { SpooledUpdate } from './update-spool.js';

const MAX_MISSING_LISTED = 4096;
/** Smallest flow-control credit per sender, chunks: below it acks would outnumber chunks. */
const MIN_CREDIT_CHUNKS = 8;

/**
 * Flow-control credit per sender, chunks: the configured `windowChunks` shared by `senders`
 * uploads, at least MIN_CREDIT_CHUNKS; 0 when flow control is off. (`windowChunks`, in the config
 * and in acks and announcements as `window`, is this flow-control credit: documented protocol
 * names, unrelated to the factory's training windows.)
 */
export function creditChunksPerSender(windowChunks: number, senders: number): number {
  if (windowChunks <= 0) return 0;
  return Math.max(MIN_CREDIT_CHUNKS, Math.floor(windowChunks / Math.max(1, senders)));
}

/** Refused attempts a round record keeps (a hostile agent must not grow the journal without bound); later ones are logged only. */
const MAX_REFUSALS_RECORDED = 200;

export type Refusal = NonNullable<RoundRecord['refusals']>[number];

/** Keep a refused attempt in the round record: every one, also when a later attempt of the agent is accepted. */
export function recordRefusal(record: RoundRecord, refusal: Refusal, ctx: Pick<AggregatorContext, 'log'>): void {
  record.refusals ??= [];
  if (record.refusals.length < MAX_REFUSALS_RECORDED) record.refusals.push(refusal);
  else ctx.log.warn({ round: record.round, agent: refusal.agent, code: refusal.code }, 'refusal not kept in the round record: its list is full');
}

interface RefusedUpload {
  upload: string;
  sha256: string | null;
  code: string;
  reason: string;
}

export interface UploadCollectorOptions {
  ctx: AggregatorContext;
  state: RoundState;
  record: RoundRecord;
  base: StoredModel;
  federatedNames: readonly string[];
  /** Called after each verdict on an upload (accepted, refused): the round may close now. */
  onVerdict: () => void;
}

/**
 * Every update upload of one round, from its first chunk to its verdict: uploads being received
 * (written straight into the spool and verified as they stream), being finished (SHA-256, fsync,
 * spool commit) or refused, and the flow-control credit the senders share. The round's
 * accepted updates themselves live in RoundState.
 */
export class UploadCollector {
  private readonly o: UploadCollectorOptions;
  /** Uploads being received, per agent. */
  private readonly receivers = new Map<string, UpdateReceiver>();
  /** Upload ids being verified, per agent. */
  private readonly verifying = new Map<string, string>();
  /** The last refused upload of each agent: its chunks and update-done get the same verdict. */
  private readonly refused = new Map<string, RefusedUpload>();
  /** Extra uploads (agent/upload) of agents already accepted, refused once each. */
  private readonly extraRefused = new Set<string>();
  /** The credit each upload in progress was last told; before its first progress ack, at least MIN_CREDIT_CHUNKS (the announcement's share). */
  private readonly granted = new WeakMap<UpdateReceiver, number>();

  constructor(o: UploadCollectorOptions) {
    this.o = o;
  }

  /** A chunk of an agent that has no accepted update this round yet. Throws a FedlineError to refuse the message. */
  chunk(msg: UpdateChunkMsg, topic: string): void {
    const { ctx } = this.o;
    const { agent, upload } = msg;
    if (this.verifying.get(agent) === upload) {
      ctx.counters.inc('duplicate-chunk');
      return;
    }
    if (this.refused.get(agent)?.upload === upload) {
      ctx.counters.inc('chunk-of-refused-update');
      return;
    }
    if (msg.chunkBytes !== ctx.config.chunkBytes) {
      const err = new FedlineError(ErrorCodes.CHUNK_MISMATCH, `chunks of ${msg.chunkBytes} bytes; the round asks for ${ctx.config.chunkBytes}`);
      this.refuse(agent, upload, null, err, topic);
      return;
    }
    let r: UpdateReceiver;
    try {
      r = this.receiverFor(msg);
    } catch (err) {
      // The upload's geometry cannot be taken (too big, total and size disagree).
      this.refuse(agent, upload, null, err, topic);
      return;
    }
    if (!this.take(r, msg, topic)) return;
    if (r.failure) {
      // The header or a value is already known to be bad: refuse now, the agent stops sending.
      this.receivers.delete(agent);
      r.discard();
      this.refuse(agent, upload, null, r.failure, topic);
      this.regrantCredit();
      return;
    }
    const credit = this.creditChunks();
    if (credit > 0) {
      // Report every quarter of what the agent was told, not of the share now: before its first
      // progress ack it knows only the announcement's share (8 chunks among 100 selected), and while
      // few uploads have begun the share now is larger (256 / 5 = 51): a report every 12 chunks
      // never came to an agent that stopped at 8, and it waited out its credit timeout.
      const told = this.granted.get(r) ?? creditChunksPerSender(ctx.config.windowChunks, this.o.state.plan.selected.length);
      const stored = r.progressDue(Math.max(1, Math.floor(Math.min(credit, told) / 4)));
      if (stored !== null) {
        this.granted.set(r, credit);
        ctx.sendAck(this.o.state.plan.round, agent, { status: 'progress', upload, stored, window: credit });
      }
    }
    if (r.ready) this.startFinish(r, topic);
  }

  /**
   * Store a chunk. A damaged one (CRC) is refused alone: the agent is told at once which chunk to
   * send again (`incomplete` with the code), the upload goes on. A malformed one (seq or length
   * wrong for the upload) refuses the upload. Returns false when the chunk was not stored.
   */
  private take(r: UpdateReceiver, msg: UpdateChunkMsg, topic: string): boolean {
    const { ctx, state } = this.o;
    try {
      if (r.accept(msg) === 'duplicate') ctx.counters.inc('duplicate-chunk');
      else ctx.counters.inc('update-chunk');
      return true;
    } catch (err) {
      if (isFedlineError(err, ErrorCodes.CHUNK_CRC)) {
        const { code, message } = describeError(err);
        ctx.reject(err, topic, msg.agent);
        ctx.sendAck(state.plan.round, msg.agent, { status: 'incomplete', upload: msg.upload, code, reason: message, missing: [msg.seq] });
        return false;
      }
      this.receivers.delete(r.agent);
      r.discard();
      this.refuse(r.agent, r.upload, null, err, topic);
      this.regrantCredit();
      return false;
    }
  }

  /**
   * update-done of an agent that has no accepted update this round yet: finish the upload or say
   * what is missing. The acks sent here answer it and echo its `query`; a verdict reached later
   * (after verification) is sent on its own, without one.
   */
  done(msg: UpdateDoneMsg): void {
    const { ctx } = this.o;
    const { agent, round, upload, sha256, query } = msg;
    if (this.verifying.get(agent) === upload) return; // the verdict follows
    const refused = this.refused.get(agent);
    if (refused && refused.upload === upload) {
      ctx.sendAck(round, agent, { status: 'rejected', upload, sha256, query, code: refused.code, reason: refused.reason });
      return;
    }
    const r = this.receivers.get(agent);
    if (r && r.upload === upload && r.matches({ ...msg, chunkBytes: ctx.config.chunkBytes })) {
      r.expectedSha = sha256;
      if (r.ready) {
        this.startFinish(r, ctx.topics.update(round, agent));
        return;
      }
      ctx.sendAck(round, agent, { status: 'incomplete', upload, sha256, query, missing: r.missing(MAX_MISSING_LISTED) });
      return;
    }
    ctx.sendAck(round, agent, {
      status: 'incomplete',
      upload,
      sha256,
      query,
      missing: Array.from({ length: Math.min(msg.total, MAX_MISSING_LISTED) }, (_, i) => i),
    });
  }

  /**
   * Another upload of an agent whose update is already accepted: refused, kept in the round record
   * and acked `rejected` once per upload (its other chunks are dropped quietly).
   */
  refuseExtraUpload(agent: string, upload: string, err: unknown, topic: string): void {
    const { ctx, state, record } = this.o;
    if (this.extraRefused.has(`${agent}/${upload}`)) {
      ctx.counters.inc('chunk-of-refused-update');
      return;
    }
    this.extraRefused.add(`${agent}/${upload}`);
    const { code, message } = describeError(err);
    ctx.reject(err, topic, agent);
    recordRefusal(record, { agent, upload, code, reason: message, at: ctx.clock.now() }, ctx);
    ctx.sendAck(state.plan.round, agent, { status: 'rejected', upload, code, reason: message });
  }

  /** The round closed: uploads still arriving are dropped (their part files removed). */
  discardAll(): void {
    for (const r of this.receivers.values()) r.discard();
    this.receivers.clear();
  }

  /**
   * Credit shared by the uploads in progress: the broker holds at most about windowChunks chunks
   * for this aggregator, however many agents send at once.
   */
  private creditChunks(): number {
    return creditChunksPerSender(this.o.ctx.config.windowChunks, this.receivers.size);
  }

  /**
   * An upload ended: the others' share of the credit may grow. Tell those it grows for now.
   * Progress is reported every quarter of the credit, so when it grows (ten senders down to one:
   * 25 -> 256 chunks) an agent that has sent its whole old share (25) never reaches the new
   * report interval (64): it would wait for credit that no chunk of it can bring. Only those whose
   * share grows are told: with 300 senders the share stays at MIN_CREDIT_CHUNKS until fewer than
   * 33 remain, and telling every sender at every end was up to N(N-1)/2 progress acks a round (44,850 for 300).
   */
  private regrantCredit(): void {
    const credit = this.creditChunks();
    if (credit <= 0 || this.receivers.size === 0) return;
    for (const r of this.receivers.values()) {
      if (credit <= (this.granted.get(r) ?? MIN_CREDIT_CHUNKS)) continue;
      const stored = r.progressNow();
      if (stored === null) continue;
      this.granted.set(r, credit);
      this.o.ctx.sendAck(this.o.state.plan.round, r.agent, { status: 'progress', upload: r.upload, stored, window: credit });
    }
  }

  /** The receiver of this chunk's upload: a new upload (or a changed geometry) replaces an incomplete one. */
  private receiverFor(msg: UpdateChunkMsg): UpdateReceiver {
    const { ctx, state, base, federatedNames } = this.o;
    const { agent, upload } = msg;
    const { round } = state.plan;
    const r = this.receivers.get(agent);
    if (r && r.upload === upload && r.matches(msg)) return r;
    if (r) {
      ctx.log.warn({ agent, old: r.upload, new: upload }, 'a new update upload replaces an incomplete one');
      r.discard();
      this.receivers.delete(agent);
    }
    const { config } = ctx;
    const tensors = base.tensors.filter((t) => federatedNames.includes(t.name));
    const dtype = dtypeOf(config.encoding);
    const next = new UpdateReceiver({
      agent,
      upload,
      path: ctx.spool.partPath(round, agent, upload),
      total: msg.total,
      bundleBytes: msg.bundleBytes,
      chunkBytes: msg.chunkBytes,
      // The model bounds the update; maxUpdateBytes, when set, can only lower that bound.
      maxBundleBytes: Math.min(derivedMaxUpdateBytes(tensors, dtype), config.maxUpdateBytes ?? Infinity),
      expect: {
        round,
        agent,
        baseVersion: base.version,
        tensors,
        dtype,
        delta: config.delta,
        maxSamples: sampleLimit(agent, {
          maxSamplesPerAgent: config.maxSamplesPerAgent,
          registeredSamples: config.registeredSamples,
          registeredTolerance: config.registeredSamplesTolerance,
        }),
      },
    });
    this.receivers.set(agent, next);
    return next;
  }

  private startFinish(r: UpdateReceiver, topic: string): void {
    this.receivers.delete(r.agent);
    this.regrantCredit();
    this.verifying.set(r.agent, r.upload);
    this.finishUpdate(r, topic).finally(() => {
      if (this.verifying.get(r.agent) === r.upload) this.verifying.delete(r.agent);
    });
  }

  /** SHA-256 and content verdict, then into the spool and the round: accepted, or refused. */
  private async finishUpdate(r: UpdateReceiver, topic: string): Promise<void> {
    const { ctx, state, record } = this.o;
    const { round } = state.plan;
    const { agent, upload } = r;
    try {
      const { header, payloadStart, sha256 } = await r.finish();
      const meta = header.meta;
      const info: SpooledUpdate = {
        agent,
        upload,
        sampleCount: meta.sampleCount,
        bytes: r.bundleBytes,
        sha256,
        metricsBefore: meta.metricsBefore,
        metricsAfter: meta.metricsAfter,
        trainMs: meta.trainMs,
        delta: meta.delta,
        ...(meta.steps !== undefined ? { steps: meta.steps } : {}),
        payloadStart,
        tensors: header.tensors,
        acceptedAt: ctx.clock.now(),
      };
      if (state.closed) {
        r.discard();
        return;
      }
      await ctx.spool.commit(round, info, r.path);
      if (state.closed) return;
      state.recordAccepted(info);
      this.refused.delete(agent);
      record.acceptedAt![agent] = info.acceptedAt;
      ctx.counters.inc('accepted-update');
      ctx.log.info({ round, agent, samples: meta.sampleCount, bytes: r.bundleBytes }, 'update accepted');
      ctx.sendAck(round, agent, { status: 'accepted', upload, sha256 });
      this.o.onVerdict();
    } catch (err) {
      r.discard();
      this.refuse(agent, upload, r.expectedSha, err, topic);
    }
  }

  /** An upload is refused: log, count, record the failure, alert, and tell the agent. */
  private refuse(agent: string, upload: string, sha256: string | null, err: unknown, topic: string): void {
    const { ctx, state } = this.o;
    const { round } = state.plan;
    const { code, message } = describeError(err);
    ctx.reject(err, topic, agent);
    if (state.closed) return;
    this.refused.set(agent, { upload, sha256, code, reason: message });
    state.recordFailure({ agent, code, reason: message });
    recordRefusal(this.o.record, { agent, upload, code, reason: message, at: ctx.clock.now() }, ctx);
    ctx.emitEvent('alert', { severity: 'warning', code, agent, round, message: `update of ${agent} rejected: ${message}` });
    ctx.sendAck(round, agent, { status: 'rejected', upload, sha256, code, reason: message });
    this.o.onVerdict();
  }
}
