import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { pino } from 'pino';
import { downloadModelToFile } from '../edge-agent/model-downlink.js';
import { sendUpdate } from '../edge-agent/uplink.js';
import { decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import { createLogger } from '../shared/util/logger.js';
import { classificationMetrics } from '../shared/fl/classification-metrics.js';
import { PROTOCOL_VERSION, roundAnnouncementSchema, SUPPORTED_VERSIONS, type RoundAnnouncement, type UpdateMeta } from '../shared/protocol/messages.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { createTopics } from '../shared/protocol/topics.js';
import { encodeUpdateSource } from '../shared/bundle/encoded-update.js';
import { denseShapes, memoryOf, syntheticTensors, vgg19Shapes } from './synthetic.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * The processes of `npm run bench:transport`, each forked on its own so that its CPU and memory
 * are its own:
 *
 *   plain-sub URL BYTES                     MQTT.js subscriber counting bytes (the broker ceiling)
 *   plain-pub URL BYTES CHUNK WINDOW        MQTT.js publisher: QoS 1 chunks, WINDOW in flight
 *   agent URL FED ID SEED MODEL DIR INFLIGHT a fedline agent's transfer path without training:
 *        follows the round announcements; uploads a synthetic update through edge-agent/uplink.ts
 *        (encoded chunk by chunk, hashed while sent, end-to-end flow control); downloads new
 *        models through edge-agent/model-downlink.ts into a file (CRC per chunk, SHA-256).
 *
 * Results go to the parent over IPC.
 */

const [role, url, ...rest] = process.argv.slice(2);
const report = (msg: Record<string, unknown>) => process.send?.(msg);
/** Every peer logs in (the parent passes the user and password; the brokers refuse anonymous clients). */
const login = { username: process.env.BENCH_MQTT_USER!, password: process.env.BENCH_MQTT_PASSWORD! };

/** Reset this process's peak RSS (Linux: `5` in clear_refs), so each phase reports its own peak. */
function resetPeak(): void {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
  } catch {
    // not Linux, or not allowed: peaks then cover the whole process life
  }
}

async function plainSub(bytes: number): Promise<void> {
  const client = mqtt.connect(url!, { protocolVersion: 4, clean: true, clientId: `bench-plain-sub-${process.pid}`, ...login });
  let got = 0;
  let messages = 0;
  let firstAt = 0;
  client.on('message', (_topic, payload) => {
    if (!firstAt) firstAt = Date.now();
    got += payload.byteLength;
    messages++;
    if (got >= bytes) {
      report({ type: 'plain-received', firstAt, lastAt: Date.now(), bytes: got, messages, peakMiB: memoryOf('self')?.peakMiB });
      client.end(true, {}, () => process.exit(0));
    }
  });
  client.on('connect', () => client.subscribe('bench/plain/#', { qos: 1 }, () => report({ type: 'ready' })));
}

async function plainPub(bytes: number, chunkBytes: number, window: number): Promise<void> {
  const client = mqtt.connect(url!, { protocolVersion: 4, clean: true, clientId: `bench-plain-pub-${process.pid}`, ...login });
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  report({ type: 'ready' });
  await new Promise((r) => setTimeout(r, 200)); // let the parent take a CPU sample first
  const total = Math.ceil(bytes / chunkBytes);
  const payload = Buffer.alloc(chunkBytes, 0x5a);
  const startedAt = Date.now();
  let next = 0;
  let inflight = 0;
  await new Promise<void>((resolve, reject) => {
    const pump = () => {
      while (inflight < window && next < total) {
        const n = Math.min(chunkBytes, bytes - next * chunkBytes);
        inflight++;
        next++;
        client.publish('bench/plain/x', n === chunkBytes ? payload : payload.subarray(0, n), { qos: 1 }, (err) => {
          if (err) return reject(err);
          inflight--;
          if (next >= total && inflight === 0) resolve();
          else pump();
        });
      }
    };
    pump();
  });
  report({ type: 'plain-sent', startedAt, ackedAt: Date.now(), peakMiB: memoryOf('self')?.peakMiB });
  client.end(false, {}, () => process.exit(0));
}

async function agent(federation: string, id: string, seed: number, model: string, dir: string, maxInflight: number): Promise<void> {
  const shapes = model === 'vgg19' ? vgg19Shapes() : denseShapes(Number(model));
  const topics = createTopics(`fl/${federation}`);
  // Warnings and errors of the agent's transfer code (stalls, credit timeouts, resends) go to the benchmark's output.
  const log = createLogger({ level: 'warn', name: `bench-agent-${id}`, destination: pino.destination(2) });
  const transport = await MqttTransport.connect({ url: url!, clientId: `bench-agent-${id}`, logger: log, ...login });
  const status = (state: string) =>
    encodeJson({ v: PROTOCOL_VERSION, agent: id, state, round: null, progress: null, detail: 'benchmark agent', backend: null, samples: null, ts: Date.now() });
  const handled = new Set<string>();
  let work = Promise.resolve();
  await transport.subscribe(topics.round(), (m) => {
    if (m.payload.byteLength === 0) return;
    const ann = decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round' }) as RoundAnnouncement;
    if (ann.state === 'complete') {
      work = work.then(async () => {
        report({ type: 'complete' });
        await transport.publish(topics.status(id), status('offline'), { retain: true });
        await transport.close();
        process.exit(0);
      });
      return;
    }
    const key = `${ann.round}/${ann.kind}`;
    if (ann.state !== 'open' || !ann.selected.includes(id) || handled.has(key)) return;
    handled.add(key);
    work = work
      .then(() => (ann.kind === 'train' ? upload(ann) : download(ann)))
      .catch((err: Error) => {
        report({ type: 'error', message: err.stack ?? err.message });
      });
  });
  await transport.publish(topics.status(id), status('idle'), { retain: true });
  report({ type: 'ready' });

  async function upload(ann: RoundAnnouncement): Promise<void> {
    const meta: UpdateMeta = {
      kind: 'update',
      agent: id,
      round: ann.round,
      baseVersion: ann.base.version,
      sampleCount: 100 + 37 * seed,
      epochs: 1,
      metricsBefore: null,
      metricsAfter: null,
      trainMs: 0,
      backend: 'synthetic',
      delta: false,
    };
    if (ann.delta) throw new FedlineError(ErrorCodes.UPDATE_MANIFEST, 'the benchmark agent sends whole weights (it holds no base model)');
    resetPeak();
    const startedAt = Date.now();
    const source = encodeUpdateSource(syntheticTensors(shapes, seed), meta, { encoding: ann.encoding, delta: false });
    const sent = await sendUpdate(transport, topics, source, log, {
      round: ann.round,
      agent: id,
      chunkBytes: ann.chunkBytes,
      maxInflight,
      ackTimeoutMs: 60_000,
      windowChunks: ann.windowChunks,
    });
    report({
      type: 'upload',
      startedAt,
      verdictAt: Date.now(),
      status: sent.ack.status,
      code: sent.ack.code,
      bytes: source.byteLength,
      chunks: Math.ceil(source.byteLength / ann.chunkBytes),
      sentBytes: sent.sentBytes,
      resentChunks: sent.resentChunks,
      creditWaits: sent.creditWaits,
      sha256: sent.sha256,
      ackSha256: sent.ack.sha256,
      peakMiB: memoryOf('self')?.peakMiB,
    });
  }

  async function download(ann: RoundAnnouncement): Promise<void> {
    resetPeak();
    const startedAt = Date.now();
    await downloadModelToFile(transport, topics, ann.base, join(dir, `${id}-v${ann.base.version}.flb`), log, { maxModelBytes: 4 * 2 ** 30, stallMs: 60_000 });
    report({ type: 'download', version: ann.base.version, startedAt, verifiedAt: Date.now(), bytes: ann.base.bytes, peakMiB: memoryOf('self')?.peakMiB });
    const metrics = classificationMetrics([0, 1, 2, 3], [0, 1, 2, 3], 4);
    await transport.publish(
      topics.update(ann.round, id),
      packMsg({ v: PROTOCOL_VERSION, type: 'eval', round: ann.round, agent: id, baseVersion: ann.base.version, metrics, downloadedBytes: ann.base.bytes }),
    );
  }
}

const main = async () => {
  if (role === 'plain-sub') return plainSub(Number(rest[0]));
  if (role === 'plain-pub') return plainPub(Number(rest[0]), Number(rest[1]), Number(rest[2]));
  if (role === 'agent') return agent(rest[0]!, rest[1]!, Number(rest[2]), rest[3]!, rest[4]!, Number(rest[5]));
  throw new FedlineError(ErrorCodes.CONFIG_INVALID, `unknown role ${role}`);
};
main().catch((err: Error) => {
  report({ type: 'error', message: err.stack ?? err.message });
  process.exit(1);
});
// The parent's end is ours: never outlive the benchmark.
process.on('disconnect', () => process.exit(0));
