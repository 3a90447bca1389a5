import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ProcessGroup } from '../demo/process-group.js';
import { listImageFiles, loadDataset, splitFiles } from '../training/image-folder.js';
import { normalizeInPlace } from '../training/preprocess.js';
import { InspectionService, type Verdict } from '../edge-agent/inspect.js';
import { ModelCache } from '../edge-agent/model-cache.js';
import { TfjsClassifier } from '../training/tfjs-classifier.js';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import { publishChunks } from '../shared/bundle/chunk-publisher.js';
import { chunkCount } from '../shared/bundle/chunking.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import { silentLogger } from '../shared/util/logger.js';
import { releasedManifestSchema, verdictSchema, type ReleasedManifest } from '../shared/protocol/mes.js';
import { modelMetaSchema, type ModelMeta } from '../shared/protocol/messages.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { bundleTensors, decodeBundle, encodeBundle, sha256Hex } from '../shared/bundle/tensor-bundle.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { modelFromWeights } from '../training/model-io.js';
import { createTopics, type Topics } from '../shared/protocol/topics.js';
import { startAedes, tempDir, tinyDataset, waitFor } from './helpers.js';

const topics = createTopics('fl/test');
const SHAPE: [number, number, 3] = [16, 16, 3];

/** Global model version `version` (weights from `seed`), as the aggregator stores it. */
async function modelBundle(version: number, seed: number): Promise<Buffer> {
  const { tf } = await loadTf('cpu');
  const b = decodeBundle<ModelMeta>(
    await buildInitialBundle(tf, { architecture: 'small-cnn', inputShape: SHAPE, classes: [...INSPECTION_CLASSES], seed, normalization: 'per-image' }),
    modelMetaSchema,
  );
  return encodeBundle(bundleTensors(b), { ...b.header.meta, version, round: version });
}

let releaseSeq = 0;

/** Release a global model the way the aggregator does: retained chunks, then the retained released manifest. */
async function publishModel(t: MqttTransport, tp: Topics, bundle: Buffer, chunkBytes = 8192): Promise<void> {
  const meta = decodeBundle<ModelMeta>(bundle, modelMetaSchema).header.meta;
  const sha256 = sha256Hex(bundle);
  await publishChunks(
    t,
    bundle,
    (seq) => tp.modelChunk(meta.version, seq),
    (c) => ({ v: 1, type: 'model-chunk', version: meta.version, sha256, ...c }),
    { chunkBytes, maxInflight: 16, retain: true },
  );
  const manifest: ReleasedManifest = {
    v: 1,
    federation: 'test',
    version: meta.version,
    round: meta.round,
    sha256,
    bytes: bundle.byteLength,
    chunks: chunkCount(bundle.byteLength, chunkBytes),
    chunkBytes,
    createdAt: Date.now(),
    stage: 'released',
    releaseSeq: ++releaseSeq,
    releasedAt: Date.now(),
    by: 'test',
    sites: {},
    signature: null,
  };
  assert.ok(releasedManifestSchema.safeParse(manifest).success);
  await t.publish(tp.modelReleased(), encodeJson(manifest), { retain: true });
}

/** Drop an image into the watched folder the recommended way: temporary name, then rename. */
function drop(src: string, dir: string, name: string): void {
  copyFileSync(src, join(dir, `.${name}.tmp`));
  renameSync(join(dir, `.${name}.tmp`), join(dir, name));
}

test(
  'inspection service: verdicts from the released global model, hot swap to a new version without dropping an image, preprocessing as in training',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('inspect');
    const broker = await startAedes();
    const aggregator = await MqttTransport.connect({ url: broker.url, clientId: 'agg', logger: silentLogger() });
    const mes = await MqttTransport.connect({ url: broker.url, clientId: 'mes', logger: silentLogger() });
    const transport = await MqttTransport.connect({ url: broker.url, clientId: 'inspect', logger: silentLogger() });
    await tinyDataset(join(dir.path, 'data'), ['site-a'], 6);
    const dataDir = join(dir.path, 'data', 'site-a');
    const sources = (await listImageFiles(dataDir, INSPECTION_CLASSES)).files.map((f) => f.path);
    const incoming = join(dir.path, 'incoming');
    const archive = join(dir.path, 'done');
    const verdictTopic = 'fl/test/inspection/site-a/verdict';
    const received: Verdict[] = [];
    const invalid: string[] = [];
    await mes.subscribe(verdictTopic, (m) => {
      const v = JSON.parse(m.payload.toString()) as Verdict;
      const r = verdictSchema.safeParse(v);
      if (!r.success) invalid.push(r.error.message);
      received.push(v);
    });
    const { tf } = await loadTf('cpu');
    const service = new InspectionService({
      agentId: 'site-a',
      station: 'line1-cam',
      transport,
      topics,
      cache: new ModelCache(join(dir.path, 'state', 'models'), silentLogger()),
      classifierFor: (bundle) => TfjsClassifier.fromBundle(tf, bundle),
      verdictTopic,
      imagesTopic: 'fl/test/inspection/site-a/images',
      watch: { dir: incoming, archiveDir: archive, settleMs: 20, rescanMs: 400 },
      maxModelBytes: 1 << 30,
      maxQueuedImages: 1000,
      log: silentLogger(),
    });
    const origin = new Map<string, string>();
    let n = 0;
    const dropNext = () => {
      const src = sources[n % sources.length]!;
      const name = `img-${String(n).padStart(3, '0')}${src.slice(src.lastIndexOf('.'))}`;
      origin.set(name, src);
      drop(src, incoming, name);
      n++;
    };
    try {
      await service.start();
      // 1. Images before any model: they wait, none is lost.
      for (let i = 0; i < 3; i++) dropNext();
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(received.length, 0);
      assert.equal(service.queued, 3);
      const v0 = await modelBundle(0, 11);
      await publishModel(aggregator, topics, v0);
      await waitFor('the first verdicts', () => received.length === 3, 30_000);
      assert.ok(received.every((v) => v.modelVersion === 0 && v.modelSha256 === sha256Hex(v0)));

      // 2. A steady stream of images; version 1 is published in the middle of it.
      const v1 = await modelBundle(1, 12);
      for (let i = 0; i < 30; i++) {
        dropNext();
        if (i === 10) await publishModel(aggregator, topics, v1);
        await new Promise((r) => setTimeout(r, 25));
      }
      // 3. Two images over MQTT, one of them not an image at all.
      await mes.publish('fl/test/inspection/site-a/images/cam7-0042', readFileSync(sources[0]!));
      await mes.publish('fl/test/inspection/site-a/images', Buffer.from('not an image'));
      await waitFor('every image answered', () => received.length === n + 2, 60_000);

      const files = received.filter((v) => v.source.kind === 'file');
      assert.equal(files.length, n);
      assert.equal(new Set(files.map((v) => (v.source as { path: string }).path)).size, n, 'each file exactly one verdict: none dropped, none twice');
      const versions = received.filter((v) => v.modelVersion !== null).map((v) => v.modelVersion!);
      assert.ok(versions.includes(0) && versions.includes(1), 'both versions used');
      for (let i = 1; i < versions.length; i++) assert.ok(versions[i]! >= versions[i - 1]!, 'the switch happens once, between two images');
      assert.equal(versions.at(-1), 1);
      assert.equal(service.modelVersion, 1);
      const viaMqtt = received.filter((v) => v.source.kind === 'mqtt');
      assert.deepEqual(viaMqtt.map((v) => (v.source as { imageId: string | null }).imageId).sort(), ['cam7-0042', null].sort() as (string | null)[]);
      const bad = viaMqtt.find((v) => v.error !== null)!;
      assert.equal(bad.class, null);
      assert.match(bad.error!, /not a PNG or JPEG/);
      assert.equal(service.counters.get('FL_DATA'), 1);
      assert.deepEqual(invalid, [], 'every verdict matches the documented schema');
      assert.equal(readdirSync(incoming).length, 0, 'classified images were moved to the archive');
      assert.equal(readdirSync(archive).length, n);

      // 4. The verdicts agree with the model as training and evaluation see the same images.
      const model = await modelFromWeights(tf, decodeBundle<ModelMeta>(v1, modelMetaSchema).header.meta.topology, bundleTensors(decodeBundle(v1)));
      const data = await loadDataset({ dir: dataDir, classes: INSPECTION_CLASSES, inputShape: SHAPE, testFraction: 0.99, splitSeed: 3 });
      const testX = new Float32Array(data.test.count * SHAPE[0] * SHAPE[1] * SHAPE[2]);
      await data.test.read(
        Array.from({ length: data.test.count }, (_, i) => i),
        testX,
      );
      normalizeInPlace(testX, data.test.count, SHAPE[2], 'per-image');
      const testPaths = splitFiles((await listImageFiles(dataDir, INSPECTION_CLASSES)).files, INSPECTION_CLASSES.length, 0.99, 3).test.map((f) => f.path);
      const probs = tf.tidy(
        () => (model.predict(tf.tensor4d(testX, [data.test.count, ...SHAPE])) as import('@tensorflow/tfjs').Tensor).arraySync() as number[][],
      );
      model.dispose();
      let compared = 0;
      for (const v of files.filter((x) => x.modelVersion === 1)) {
        const src = origin.get(basename((v.source as { path: string }).path))!;
        const i = testPaths.indexOf(src);
        if (i < 0) continue;
        INSPECTION_CLASSES.forEach((c, k) =>
          assert.ok(Math.abs(v.probabilities![c]! - probs[i]![k]!) < 1e-5, `${src} ${c}: ${v.probabilities![c]} vs ${probs[i]![k]}`),
        );
        assert.equal(v.class, INSPECTION_CLASSES[probs[i]!.indexOf(Math.max(...probs[i]!))]);
        compared++;
      }
      assert.ok(compared >= 5, `compared ${compared} images with the training data path`);
    } finally {
      await service.stop();
      for (const t of [aggregator, mes, transport]) await t.close();
      await broker.close();
      dir.cleanup();
    }
  },
);

test('`fedline inspect --config` runs as a process on the wasm backend: a dropped image gets a verdict, logged', { timeout: 60_000 }, async () => {
  const dir = tempDir('inspect-cli');
  const broker = await startAedes();
  const aggregator = await MqttTransport.connect({ url: broker.url, clientId: 'agg', logger: silentLogger() });
  const group = new ProcessGroup();
  try {
    await tinyDataset(join(dir.path, 'data'), ['site-a'], 2);
    await publishModel(aggregator, topics, await modelBundle(0, 11));
    const config = join(dir.path, 'inspect.json');
    writeFileSync(
      config,
      JSON.stringify({ agentId: 'site-a', federation: 'test', mqtt: { url: broker.url }, stateDir: 'state', watch: { dir: 'incoming' }, backend: 'wasm' }),
    );
    const verdicts: Verdict[] = [];
    await aggregator.subscribe('fl/test/inspection/site-a/verdict', (m) => verdicts.push(JSON.parse(m.payload.toString()) as Verdict));
    mkdirSync(join(dir.path, 'logs'));
    const { ready } = await group.start('inspect', ['inspect', '--config', config], join(dir.path, 'logs', 'inspect.log'));
    assert.equal(ready.verdictTopic, 'fl/test/inspection/site-a/verdict');
    const src = (await listImageFiles(join(dir.path, 'data', 'site-a'), INSPECTION_CLASSES)).files[0]!.path;
    drop(src, join(dir.path, 'incoming'), 'part-1.png');
    await waitFor('a verdict', () => verdicts.length === 1, 30_000);
    assert.equal(verdicts[0]!.modelVersion, 0);
    assert.ok(INSPECTION_CLASSES.includes(verdicts[0]!.class as never));
    assert.ok(existsSync(join(dir.path, 'state', 'models')), 'model cache under the configured stateDir');
    const logLines = () =>
      readFileSync(join(dir.path, 'logs', 'inspect.log'), 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    await waitFor('the verdict in the log', () => logLines().some((l) => typeof l.msg === 'string' && l.msg.startsWith('verdict: ')), 10_000);
    const logged = logLines().find((l) => typeof l.msg === 'string' && l.msg.startsWith('verdict: '))!;
    assert.equal(logged.class, verdicts[0]!.class);
    assert.equal(logged.modelVersion, 0);
    assert.match(String(logged.source), /part-1\.png$/);
    assert.ok(
      logLines().some((l) => l.backend === 'wasm' || (typeof l.msg === 'string' && /wasm/.test(l.msg))),
      'the wasm backend was used',
    );
  } finally {
    await group.stopAll();
    await aggregator.close();
    await broker.close();
    dir.cleanup();
  }
});
