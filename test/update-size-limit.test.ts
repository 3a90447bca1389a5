import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { derivedMaxUpdateBytes, UPDATE_HEADER_SLACK_BYTES } from '../aggregator/verify-update.js';
import { encodeBundle } from '../shared/bundle/tensor-bundle.js';
import { roundAnnouncementSchema, SUPPORTED_VERSIONS, type RoundAnnouncement } from '../shared/protocol/messages.js';
import { createTopics } from '../shared/protocol/topics.js';
import { decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { silentLogger } from '../shared/util/logger.js';
import { startAedes, startFederation, tempDir, waitFor } from './helpers.js';

test('the largest update follows from the model: its tensors in the round’s encoding plus header slack', () => {
  const tensors = [
    { name: 'conv/kernel', shape: [3, 3, 3, 16] },
    { name: 'dense/bias', shape: [4] },
  ];
  const values = 3 * 3 * 3 * 16 + 4;
  const f32 = derivedMaxUpdateBytes(tensors, 'float32');
  assert.ok(f32 >= values * 4 && f32 <= values * 4 + UPDATE_HEADER_SLACK_BYTES + 8 + 2 * 256 + 8);
  assert.ok(derivedMaxUpdateBytes(tensors, 'float16') < f32);
  assert.ok(derivedMaxUpdateBytes(tensors, 'q8') >= values * 5, 'q8 at its most expensive: one scale per value');
  // A real update bundle of these tensors (with its meta) fits.
  const bundle = encodeBundle(
    tensors.map((t) => ({ ...t, dtype: 'float32' as const, data: new Float32Array(t.shape.reduce((a, b) => a * b, 1)) })),
    {
      kind: 'update',
      agent: 'site-a',
      round: 1,
      baseVersion: 0,
      sampleCount: 10,
      epochs: 1,
      metricsBefore: null,
      metricsAfter: null,
      trainMs: 1,
      backend: 'x',
    },
  );
  assert.ok(bundle.byteLength <= f32);
});

test(
  'a rogue agent declaring a 2 GiB update for a small model is refused at its first chunk; the honest agent’s update is accepted',
  { timeout: 120_000 },
  async () => {
    const broker = await startAedes();
    const dir = tempDir('update-size');
    const topics = createTopics('fl/test');
    const fed = await startFederation({
      url: broker.url,
      dir: dir.path,
      agents: ['site-a'],
      extraMembers: ['rogue'],
      minClients: 1,
      rounds: 1,
      roundDeadlineMs: 15_000,
    });
    const rogue = await MqttTransport.connect({ url: broker.url, clientId: 'rogue', logger: silentLogger() });
    const rejected: { agent: string | null; code: string; message: string }[] = [];
    fed.aggregator.aggregator.on('rejected', (r: { agent: string | null; code: string; message: string }) => rejected.push(r));
    try {
      const status = (state: string) =>
        encodeJson({ v: 1, agent: 'rogue', state, round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() });
      await rogue.publish(topics.status('rogue'), status('idle'), { retain: true });
      let sent = false;
      await rogue.subscribe(topics.round(), (m) => {
        const ann = decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round' }) as RoundAnnouncement;
        if (sent || ann.state !== 'open' || ann.kind !== 'train' || !ann.selected.includes('rogue')) return;
        sent = true;
        const bundleBytes = 2 ** 31;
        const data = Buffer.alloc(ann.chunkBytes);
        const chunk = {
          v: 1,
          type: 'update-chunk',
          round: ann.round,
          agent: 'rogue',
          upload: 'huge-1',
          seq: 0,
          total: Math.ceil(bundleBytes / ann.chunkBytes),
          bundleBytes,
          chunkBytes: ann.chunkBytes,
          crc32: crc32(data),
          data,
        };
        void rogue.publish(topics.update(ann.round, 'rogue'), packMsg(chunk), { qos: 1 });
      });
      const run = fed.aggregator.aggregator.run();
      await waitFor('the refusal of the 2 GiB declaration', () => rejected.some((r) => r.agent === 'rogue'), 60_000);
      const r = rejected.find((x) => x.agent === 'rogue')!;
      assert.equal(r.code, 'FL_MSG_OVERSIZE');
      assert.match(r.message, /bundle of 2147483648 bytes exceeds the limit of \d+ bytes/);
      const limit = Number(/limit of (\d+)/.exec(r.message)![1]);
      assert.ok(limit < 4 * 1024 * 1024, `the limit follows the small model: ${limit} bytes`);
      await rogue.publish(topics.status('rogue'), status('offline'), { retain: true });
      const result = await run;
      assert.equal(result.rounds[0]!.outcome, 'aggregate');
      assert.deepEqual(result.rounds[0]!.participants, ['site-a'], 'the honest agent’s update went in');
    } finally {
      await rogue.close();
      await fed.stop();
      await broker.close();
      dir.cleanup();
    }
  },
);
