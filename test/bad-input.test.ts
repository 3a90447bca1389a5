import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { downloadModel } from '../edge-agent/model-downlink.js';
import { sendUpdate } from '../edge-agent/uplink.js';
import { decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';
import {
  modelMetaSchema,
  roundAnnouncementSchema,
  SUPPORTED_VERSIONS,
  type AckMsg,
  type ModelMeta,
  type RoundAnnouncement,
  type UpdateMeta,
} from '../shared/protocol/messages.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { bundleTensors, decodeBundle, encodeBundle, sha256Hex } from '../shared/bundle/tensor-bundle.js';
import { createTopics } from '../shared/protocol/topics.js';
import { assertFedAvgResult, captureUpdates } from './federation-checks.js';
import { captureLogger, startAedes, startFederation, tempDir } from './helpers.js';

test(
  'garbage, truncated msgpack, a bad CRC, a closed round and a NaN update are logged, counted and dropped; the round completes',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('bad-input');
    const broker = await startAedes();
    const { logger, lines } = captureLogger();
    const topics = createTopics('fl/test');
    const observer = await captureUpdates(broker.url);
    // site-c is a member of the federation, but here it is a hostile client sending a NaN update.
    const rogue = await MqttTransport.connect({ url: broker.url, clientId: 'rogue-site-c', logger: silentLogger() });
    await rogue.publish(
      topics.status('site-c'),
      encodeJson({ v: 1, agent: 'site-c', state: 'idle', round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() }),
      { retain: true },
    );
    const fed = await startFederation({
      url: broker.url,
      dir: dir.path,
      agents: ['site-a', 'site-b'],
      extraMembers: ['site-c'],
      minClients: 2,
      waitForAgentsMs: 1500,
      logger,
    });
    const aggregator = fed.aggregator.aggregator;

    let rogueAck: AckMsg | null = null;
    const attack = new Promise<void>((resolve, reject) => {
      let started = false;
      rogue
        .subscribe(topics.round(), (m) => {
          const ann = decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round' }) as RoundAnnouncement;
          if (started || ann.state !== 'open' || ann.round !== 1) return;
          started = true;
          (async () => {
            const update = topics.update(1, 'site-a');
            // 1. not msgpack at all (0xc1 is never valid), 2. truncated msgpack
            await rogue.publish(update, Buffer.from([0xc1, 0x00, 0xff, 0x13]));
            const chunk = {
              v: 1,
              type: 'update-chunk',
              round: 1,
              agent: 'site-a',
              upload: 'rogue1',
              seq: 0,
              total: 1,
              bundleBytes: 64,
              chunkBytes: 4096,
              data: Buffer.alloc(64, 7),
            };
            await rogue.publish(update, packMsg({ ...chunk, crc32: crc32(chunk.data) }).subarray(0, 40));
            // 3. a well-formed chunk whose CRC32 does not match its bytes
            await rogue.publish(update, packMsg({ ...chunk, crc32: (crc32(chunk.data) + 1) >>> 0 }));
            // 4. an update for a round that is not open
            await rogue.publish(
              topics.update(7, 'site-a'),
              packMsg({ v: 1, type: 'update-done', round: 7, agent: 'site-a', upload: 'rogue2', total: 1, bundleBytes: 64, sha256: 'c'.repeat(64) }),
            );
            // 5. a complete, correctly chunked update full of NaN, from a selected member
            const bundle = await downloadModel(rogue, topics, ann.base, silentLogger(), { maxModelBytes: 1 << 30, stallMs: 10_000 });
            const model = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
            const tensors = bundleTensors(model).map((t) => ({ ...t, data: new Float32Array(t.data.length).fill(Number.NaN) }));
            const meta: UpdateMeta = {
              kind: 'update',
              agent: 'site-c',
              round: 1,
              baseVersion: ann.base.version,
              sampleCount: 10,
              epochs: 1,
              metricsBefore: null,
              metricsAfter: null,
              trainMs: 1,
              backend: 'none',
            };
            const sent = await sendUpdate(rogue, topics, encodeBundle(tensors, meta), silentLogger(), {
              round: 1,
              agent: 'site-c',
              chunkBytes: ann.chunkBytes,
              maxInflight: 4,
              ackTimeoutMs: 5000,
            });
            rogueAck = sent.ack;
            // Leave, so that the final evaluation round does not wait for this "agent".
            await rogue.publish(
              topics.status('site-c'),
              encodeJson({ v: 1, agent: 'site-c', state: 'offline', round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() }),
              { retain: true },
            );
          })().then(resolve, reject);
        })
        .catch(reject);
    });

    try {
      const result = await aggregator.run();
      await attack;

      // The round completed with the two honest agents, exactly as if nothing had happened.
      const round1 = result.rounds[0]!;
      assert.equal(round1.outcome, 'aggregate');
      assert.deepEqual(round1.participants, ['site-a', 'site-b']);
      assert.deepEqual(
        round1.failures.map((f) => [f.agent, f.code]),
        [['site-c', ErrorCodes.UPDATE_NONFINITE]],
      );
      await assertFedAvgResult(
        fed.aggregator.store,
        1,
        ['site-a', 'site-b'].map((a) => observer.updates.get(`1/${a}`)!),
        [join(dir.path, 'site-a'), join(dir.path, 'site-b')],
      );
      assert.equal(rogueAck!.status, 'rejected');
      assert.equal(rogueAck!.code, ErrorCodes.UPDATE_NONFINITE);

      // Each bad input was counted under its code and logged with its topic and sender.
      const counters = aggregator.counters.toJSON();
      for (const code of [ErrorCodes.MSG_DECODE, ErrorCodes.CHUNK_CRC, ErrorCodes.ROUND_CLOSED, ErrorCodes.UPDATE_NONFINITE]) {
        assert.ok((counters[code] ?? 0) >= 1, `${code} counted (counters: ${JSON.stringify(counters)})`);
        const line = lines.find((l) => l.code === code);
        assert.ok(line, `${code} logged`);
        assert.match(String(line.topic), /^fl\/test\/round\/\d+\/update\/site-[ac]$/);
        assert.ok(line.agent === 'site-a' || line.agent === 'site-c');
      }
      assert.ok((counters[ErrorCodes.MSG_DECODE] ?? 0) >= 2, 'garbage and truncated msgpack both counted');
    } finally {
      await fed.stop();
      await rogue.close();
      await observer.close();
      await broker.close();
      dir.cleanup();
    }
  },
);

test("sha256Hex is the lowercase hex of SHA-256 (the protocol's bundle identity)", () => {
  assert.equal(sha256Hex(Buffer.from('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
});
