import { createHash } from 'node:crypto';
import { closeSync, fdatasyncSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { crc32 } from 'node:zlib';
import type { AckFields, AggregatorContext } from '../aggregator/aggregator-context.js';
import { openActiveRound } from '../aggregator/active-round.js';
import type { StoredModel } from '../aggregator/model-store.js';
import type { RoundRecord } from '../aggregator/round-journal.js';
import { RoundState } from '../aggregator/round-state.js';
import { createUpdateInbound } from '../aggregator/update-inbound.js';
import { UpdateSpool } from '../aggregator/update-spool.js';
import { UpdateStreamVerifier } from '../aggregator/verify-update.js';
import { splitIntoChunks } from '../shared/bundle/chunking.js';
import { decodeBundle, encodeBundle } from '../shared/bundle/tensor-bundle.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema, type UpdateMeta } from '../shared/protocol/messages.js';
import { decodeMsgpack, packMsg, unpackMsg } from '../shared/protocol/wire-codec.js';
import { createTopics } from '../shared/protocol/topics.js';
import { Counters } from '../shared/util/counters.js';
import { silentLogger } from '../shared/util/logger.js';

/**
 * `npm run bench:receive`: what each check of the aggregator's receive path costs, in CPU seconds
 * per GB, in one process (no broker, no MQTT: the part of "receiver to the ack" in
 * bench:transport that a plain MQTT.js subscriber does not have). Each check alone over the same
 * update chunks, then the whole inbound path (aggregator/update-inbound.ts: decode, topic and
 * round checks, CRC32, spool write, SHA-256, header and finite checks, fsync, commit, ack).
 *
 *   --params N   float32 parameters of the update (default 40000000: 160 MB)
 *   --reps N     repetitions; the lowest figure of each line is printed (default 3)
 */

const { values: args } = parseArgs({ options: { params: { type: 'string', default: '40000000' }, reps: { type: 'string', default: '3' } } });
const CHUNK_BYTES = 256 * 1024;
const width = Math.floor(Math.sqrt(Number(args.params)));
const reps = Number(args.reps);
const say = (s: string) => process.stdout.write(s + '\n');

const meta = (agent: string): UpdateMeta => ({
  kind: 'update',
  agent,
  round: 1,
  baseVersion: 0,
  sampleCount: 10,
  epochs: 1,
  metricsBefore: null,
  metricsAfter: null,
  trainMs: 1,
  backend: 'synthetic',
});
const values = new Float32Array(width * width).map((_, i) => Math.sin(i) * 0.01);
const bundle = encodeBundle([{ name: 'w', shape: [width, width], dtype: 'float32', data: values }], meta('agent-01'));
const gb = bundle.byteLength / 1e9;
const chunks = [...splitIntoChunks(bundle, CHUNK_BYTES)];
const payloads = chunks.map((c) => packMsg({ v: 1, type: 'update-chunk', round: 1, agent: 'agent-01', upload: 'u1', ...c }));
const sha256 = createHash('sha256').update(bundle).digest('hex');
/** The round's base model as the aggregator knows it (tensor layout only: an update is checked against it). */
const baseTensors = decodeBundle(encodeBundle([{ name: 'w', shape: [width, width], dtype: 'float32', data: values }], { kind: 'model' })).header.tensors;
const dir = mkdtempSync(join(tmpdir(), 'fedline-bench-receive-'));

function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Lowest CPU per GB of `fn` over the repetitions; `after` (cleanup) runs outside the measurement. */
async function measure(fn: () => void | Promise<void>, after: () => void | Promise<void> = () => undefined): Promise<number> {
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t = cpuSeconds();
    await fn();
    best = Math.min(best, (cpuSeconds() - t) / gb);
    await after();
  }
  return best;
}

function spoolWrite(sync: boolean): void {
  const path = join(dir, 'write.part');
  const fd = openSync(path, 'w+');
  ftruncateSync(fd, bundle.byteLength);
  for (const c of chunks) writeSync(fd, c.data, 0, c.data.byteLength, c.seq * CHUNK_BYTES);
  if (sync) fdatasyncSync(fd);
  closeSync(fd);
  rmSync(path);
}

/** The whole inbound path of a real aggregator round (steps, upload collector, spool on disk), until the accepted ack. */
async function inboundPath(): Promise<void> {
  const topics = createTopics('fl/bench');
  const spool = new UpdateSpool(join(dir, 'spool'));
  spool.ensureRound(1);
  let verdict: (ack: AckFields) => void = () => undefined;
  const done = new Promise<AckFields>((resolve) => (verdict = resolve));
  const ctx = {
    config: {
      chunkBytes: CHUNK_BYTES,
      windowChunks: 256,
      maxUpdateBytes: 4 * 2 ** 30,
      encoding: 'f32',
      delta: false,
      agents: ['agent-01'],
      federation: 'bench',
      maxSamplesPerAgent: null,
      registeredSamples: {},
      registeredSamplesTolerance: 0.1,
    },
    topics,
    spool,
    clock: { now: () => Date.now() },
    log: silentLogger(),
    counters: new Counters(),
    emitEvent: () => undefined,
    reject: (err: unknown) => say(`rejected: ${(err as Error).message}`),
    sendAck: (_round: number, _agent: string, ack: AckFields) => (ack.status === 'accepted' || ack.status === 'rejected') && verdict(ack),
  } as unknown as AggregatorContext;
  const state = new RoundState({
    round: 1,
    kind: 'train',
    baseVersion: 0,
    selected: ['agent-01'],
    minClients: 1,
    deadlineAt: Infinity,
    startedAt: 0,
    targetAccuracy: null,
  });
  const active = openActiveRound(ctx, {
    state,
    record: { bytesUp: 0, acceptedAt: {} } as unknown as RoundRecord,
    base: { version: 0, tensors: baseTensors } as StoredModel,
    federatedNames: ['w'],
  });
  const inbound = createUpdateInbound({ ctx, current: () => active, journal: {} as never });
  const topic = topics.update(1, 'agent-01');
  for (const payload of payloads) inbound({ topic, payload, retain: false });
  inbound({
    topic,
    payload: packMsg({ v: 1, type: 'update-done', round: 1, agent: 'agent-01', upload: 'u1', total: chunks.length, bundleBytes: bundle.byteLength, sha256 }),
    retain: false,
  });
  const ack = await done;
  if (ack.status !== 'accepted') throw new Error(`update not accepted: ${ack.reason}`);
}

async function main(): Promise<void> {
  say(
    `fedline bench:receive: an update of ${(bundle.byteLength / 1e6).toFixed(0)} MB in ${chunks.length} chunks of ${CHUNK_BYTES / 1024} KiB; CPU s per GB (user + system), lowest of ${reps}`,
  );
  const line = (what: string, s: number) => say(`  ${what.padEnd(52)} ${s.toFixed(2).padStart(6)}`);
  line('CRC32 of every chunk (node:zlib)', await measure(() => chunks.forEach((c) => crc32(c.data))));
  line('SHA-256 of the bundle (node:crypto)', await measure(() => void createHash('sha256').update(bundle).digest()));
  line('msgpack decode of every chunk message', await measure(() => payloads.forEach((p) => unpackMsg(p))));
  const ctx = { topic: 'bench', what: 'update message' };
  line(
    'msgpack decode + schema check (zod)',
    await measure(() => payloads.forEach((p) => decodeMsgpack(p, updateTopicMessageSchema, SUPPORTED_VERSIONS, ctx))),
  );
  line('header + finite-values check (UpdateStreamVerifier)', await measure(() => verifyAll()));
  line('spool write (pwrite per chunk into the page cache)', await measure(() => spoolWrite(false)));
  line('spool write + fdatasync', await measure(() => spoolWrite(true)));
  line('whole inbound path, first chunk to the accepted ack', await measure(inboundPath, () => new UpdateSpool(join(dir, 'spool')).dropRound(1)));
}

function verifyAll(): void {
  const v = new UpdateStreamVerifier(bundle.byteLength, { round: 1, agent: 'agent-01', baseVersion: 0, tensors: [{ name: 'w', shape: [width, width] }] });
  for (const c of chunks) v.push(c.data, c.seq * CHUNK_BYTES);
  v.finish();
}

main()
  .catch((err: Error) => {
    process.stderr.write(`bench:receive failed: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }));
