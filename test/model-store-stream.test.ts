import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ModelBuilder } from '../aggregator/model-builder.js';
import { FsModelStore } from '../aggregator/model-store.js';
import { UpdateSpool, type SpooledUpdate } from '../aggregator/update-spool.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { ModelMeta, UpdateMeta } from '../shared/protocol/messages.js';
import { mulberry32 } from '../shared/util/random.js';
import { bundleTensors, decodeBundle, encodeBundle, sha256Hex, type NamedTensor } from '../shared/bundle/tensor-bundle.js';
import { encodeUpdateSource, tensorValues } from '../shared/bundle/encoded-update.js';
import { tempDir } from './helpers.js';

const meta = (version: number): ModelMeta => ({
  kind: 'model',
  version,
  round: version,
  topology: { t: 1 },
  headTensors: ['head'],
  classes: ['A', 'B'],
  inputShape: [8, 8, 1],
  normalization: 'unit',
  createdAt: 5,
});
const model = (seed: number): NamedTensor[] => {
  const rng = mulberry32(seed);
  return [
    { name: 'body', shape: [300, 7], dtype: 'float32', data: Float32Array.from({ length: 2100 }, () => rng()) },
    { name: 'head', shape: [7, 2], dtype: 'float32', data: Float32Array.from({ length: 14 }, () => rng()) },
  ];
};

test('a version written as a stream is byte for byte the bundle, readable as a stream, and checked against its SHA-256', async () => {
  const dir = tempDir('store-stream');
  try {
    const store = new FsModelStore(dir.path);
    const bundle = encodeBundle(model(1), meta(0));
    const saved = await store.save(bundle);
    assert.equal(saved.sha256, sha256Hex(bundle));
    // streamed write of the same content, in uneven pieces
    const writer = await store.createVersion(meta(1), model(1));
    const payload = bundle.subarray(decodeBundle(bundle).payloadStart);
    for (let at = 0; at < payload.length; at += 777) await writer.write(payload.subarray(at, at + 777));
    const v1 = await writer.commit();
    assert.deepEqual(await store.readBundle(1), encodeBundle(model(1), meta(1)));
    assert.equal(v1.sha256, sha256Hex(encodeBundle(model(1), meta(1))));
    const source = await store.openBundle(1);
    const all = Buffer.alloc(source.byteLength);
    for (let at = 0; at < all.length; at += 1000) await source.read(at, all.subarray(at, Math.min(all.length, at + 1000)));
    await source.close();
    assert.ok(all.equals(await store.readBundle(1)));
    const values = await store.openValues(1);
    const head = new Float32Array(5);
    await values.read('head', 3, head);
    await values.close();
    assert.deepEqual([...head], [...model(1)[1]!.data.subarray(3, 8)]);
    await store.verify(1);
    // A damaged weights file is found, never served.
    appendFileSync(join(store.dir(1), 'weights.bin'), Buffer.from([1]));
    await assert.rejects(
      () => store.verify(1),
      (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.MODEL_STORE && /corrupt|cannot be read/.test(e.message),
    );
    // An incomplete or aborted version leaves nothing behind.
    const partial = await store.createVersion(meta(2), model(1));
    await partial.write(payload.subarray(0, 100));
    await assert.rejects(() => partial.commit(), /100 of 8456 payload bytes/);
    assert.deepEqual(await store.versions(), [0, 1]);
    assert.deepEqual(readdirSync(dir.path).sort(), ['v0', 'v1']);
  } finally {
    dir.cleanup();
  }
});

test('the model builder writes averaged tensors in order and copies the others from the base; out of order is refused', async () => {
  const dir = tempDir('builder');
  try {
    const store = new FsModelStore(dir.path);
    await store.save(encodeBundle(model(1), meta(0)));
    const base = await store.openValues(0);
    const writer = await store.createVersion(meta(1), model(1));
    const builder = new ModelBuilder(writer, ['head'], base);
    const newHead = Float32Array.from({ length: 14 }, (_, i) => i);
    await builder.sink('head', 0, newHead.subarray(0, 6));
    await assert.rejects(async () => builder.sink('head', 0, newHead), /expects head\[6\.\.\]/);
    await builder.sink('head', 6, newHead.subarray(6));
    await builder.finish();
    await writer.commit();
    await base.close();
    const got = bundleTensors(decodeBundle(await store.readBundle(1)));
    assert.deepEqual(got[0]!.data, model(1)[0]!.data, 'the body is the base');
    assert.deepEqual([...got[1]!.data], [...newHead]);
    const w2 = await store.createVersion(meta(2), model(1));
    const base2 = await store.openValues(0);
    const b2 = new ModelBuilder(w2, ['body', 'head'], base2);
    await assert.rejects(async () => {
      await b2.sink('body', 0, new Float32Array(10));
      await b2.finish();
    }, /federated tensor "body" is incomplete/);
    await w2.abort();
    await base2.close();
  } finally {
    dir.cleanup();
  }
});

test('after a restart the spool gives back verified updates and drops one whose file was damaged', async () => {
  const dir = tempDir('spool');
  try {
    const spool = new UpdateSpool(dir.path);
    spool.ensureRound(3);
    for (const agent of ['a', 'b']) {
      const m: UpdateMeta = {
        kind: 'update',
        agent,
        round: 3,
        baseVersion: 2,
        sampleCount: 9,
        epochs: 1,
        metricsBefore: null,
        metricsAfter: null,
        trainMs: 1,
        backend: 'x',
      };
      const source = encodeUpdateSource(model(agent === 'a' ? 2 : 3).map(tensorValues), m, { encoding: 'f16', delta: false });
      const bytes = Buffer.alloc(source.byteLength);
      source.read(0, bytes);
      const part = spool.partPath(3, agent, 'up1');
      writeFileSync(part, bytes);
      const info: SpooledUpdate = {
        agent,
        upload: 'up1',
        sampleCount: 9,
        bytes: bytes.length,
        sha256: sha256Hex(bytes),
        metricsBefore: null,
        metricsAfter: null,
        trainMs: 1,
        delta: false,
        payloadStart: source.payloadStart,
        tensors: [...source.specs],
        acceptedAt: 1,
      };
      await spool.commit(3, info, part);
    }
    writeFileSync(spool.partPath(3, 'c', 'half'), Buffer.alloc(10)); // an upload interrupted by the restart
    const bFile = join(dir.path, 'r3', 'b.flb');
    appendFileSync(bFile, Buffer.from([0]));
    const restored = await spool.list(3);
    assert.deepEqual(
      restored.map((u) => u.agent),
      ['a'],
    );
    assert.deepEqual(readdirSync(join(dir.path, 'r3')).sort(), ['a.flb', 'a.json', 'b.flb']);
    // and the f16 update reads back as float32 values within half precision
    const [reader] = await spool.openReaders(3, restored);
    const head = new Float32Array(14);
    await reader!.read('head', 0, head);
    await reader!.close();
    for (let i = 0; i < 14; i++) assert.ok(Math.abs(head[i]! - model(2)[1]!.data[i]!) <= 2 ** -11);
  } finally {
    dir.cleanup();
  }
});
