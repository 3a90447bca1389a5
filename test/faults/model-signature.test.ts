import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { startAggregator } from '../../aggregator/main.js';
import { startAgent, type RunningAgent } from '../../edge-agent/main.js';
import { publishChunks } from '../../shared/bundle/chunk-publisher.js';
import { chunkCount } from '../../shared/bundle/chunking.js';
import { decodeJson, packMsg } from '../../shared/protocol/wire-codec.js';
import { ErrorCodes } from '../../shared/protocol/errors.js';
import { silentLogger } from '../../shared/util/logger.js';
import { agentStatusSchema, SUPPORTED_VERSIONS, type ModelMeta, type RoundAnnouncement } from '../../shared/protocol/messages.js';
import { generateSigningKeys, loadSigningKey, loadVerifyKey, signModel, verifyModelSignature } from '../../shared/protocol/model-signature.js';
import { MqttTransport } from '../../shared/transport/mqtt-transport.js';
import { bundleTensors, decodeBundle, encodeBundle, sha256Hex } from '../../shared/bundle/tensor-bundle.js';
import { createTopics } from '../../shared/protocol/topics.js';
import { agentConfig, aggregatorConfig, startAedes, tempDir, tinyDataset, waitFor } from '../helpers.js';

test('Ed25519 model signatures: valid verifies; another version, another hash, another key, no signature do not', () => {
  const dir = tempDir('keys');
  try {
    const { privatePem, publicPem } = generateSigningKeys();
    writeFileSync(join(dir.path, 'k'), privatePem);
    writeFileSync(join(dir.path, 'p'), publicPem);
    const key = loadSigningKey(join(dir.path, 'k'));
    const pub = loadVerifyKey(join(dir.path, 'p'));
    const sha = sha256Hex(Buffer.from('model'));
    const sig = signModel(key, 3, sha);
    assert.equal(verifyModelSignature(pub, 3, sha, sig), true);
    assert.equal(verifyModelSignature(pub, 4, sha, sig), false, 'replay under another version');
    assert.equal(verifyModelSignature(pub, 3, sha256Hex(Buffer.from('other')), sig), false);
    const other = generateKeyPairSync('ed25519');
    assert.equal(verifyModelSignature(pub, 3, sha, signModel(other.privateKey, 3, sha)), false, 'signed by someone else');
    assert.equal(verifyModelSignature(pub, 3, sha, null), false);
    assert.equal(verifyModelSignature(pub, 3, sha, 'zz'), false);
    writeFileSync(join(dir.path, 'rsa'), generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ type: 'spki', format: 'pem' }));
    assert.throws(() => loadVerifyKey(join(dir.path, 'rsa')), /rsa key; model signing uses Ed25519/);
    assert.throws(
      () => loadVerifyKey(join(dir.path, 'absent')),
      (e: unknown) => (e as { code: string }).code === ErrorCodes.CONFIG_READ,
    );
  } finally {
    dir.cleanup();
  }
});

test('agents use models signed by the aggregator and refuse a tampered or unsigned model injected on the broker', { timeout: 120_000 }, async () => {
  const dir = tempDir('fault-signature');
  const broker = await startAedes();
  const keys = generateSigningKeys();
  writeFileSync(join(dir.path, 'model-signing.key'), keys.privatePem);
  writeFileSync(join(dir.path, 'model-signing.pub'), keys.publicPem);
  const options = { url: broker.url, dir: dir.path, agents: ['site-a', 'site-b'], rounds: 1 };
  await tinyDataset(join(dir.path, 'data'), options.agents);
  const aggregator = await startAggregator({ ...aggregatorConfig(options), signingKeyFile: join(dir.path, 'model-signing.key') }, silentLogger());
  const agents: RunningAgent[] = [];
  const topics = createTopics('fl/test');
  const rogue = await MqttTransport.connect({ url: broker.url, clientId: 'rogue', logger: silentLogger() });
  const statuses = new Map<string, { state: string; detail: string | null; round: number | null }>();
  const alerts: Record<string, unknown>[] = [];
  await rogue.subscribe(topics.statusAll(), (m) => {
    if (!m.payload.length) return;
    const s = decodeJson(m.payload, agentStatusSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'status' });
    statuses.set(s.agent, s);
  });
  await rogue.subscribe(`${topics.event('alert')}/#`, (m) => alerts.push(JSON.parse(m.payload.toString()) as Record<string, unknown>));
  try {
    for (const a of options.agents)
      agents.push(await startAgent({ ...agentConfig(options, a), modelPublicKeyFile: join(dir.path, 'model-signing.pub') }, silentLogger()));
    const result = await aggregator.aggregator.run();
    assert.deepEqual(result.rounds[0]!.participants, ['site-a', 'site-b'], 'signed models are accepted');

    // The attacker publishes a model of their own (the real one with every weight shifted), once
    // signed with their own key and once unsigned, and announces a round with it.
    const real = decodeBundle<ModelMeta>(await aggregator.store.readBundle(1));
    const fakeBundle = encodeBundle(
      bundleTensors(real).map((t) => ({ ...t, data: t.data.map((v) => v + 0.5) })),
      { ...real.header.meta, version: 7 },
    );
    const fakeSha = sha256Hex(fakeBundle);
    await publishChunks(
      rogue,
      fakeBundle,
      (seq) => topics.modelChunk(7, seq),
      (c) => ({ v: 1, type: 'model-chunk', version: 7, sha256: fakeSha, ...c }),
      { chunkBytes: 4096, maxInflight: 8, retain: true },
    );
    const downBefore = agents.map((a) => a.agent.transferred.down);
    const attacker = generateKeyPairSync('ed25519');
    for (const [round, signature] of [
      [50, signModel(attacker.privateKey, 7, fakeSha)],
      [51, null],
    ] as const) {
      const fake: RoundAnnouncement = {
        v: 1,
        type: 'round',
        federation: 'test',
        runId: 'rogue-run',
        round,
        state: 'open',
        kind: 'train',
        base: { version: 7, sha256: fakeSha, bytes: fakeBundle.byteLength, chunks: chunkCount(fakeBundle.byteLength, 4096), chunkBytes: 4096, signature },
        task: { epochs: 1, batchSize: 8, learningRate: 0.01, optimizer: 'adam', classWeighting: 'auto', federated: 'all' },
        classes: real.header.meta.classes,
        selected: ['site-a', 'site-b'],
        minClients: 1,
        deadlineAt: Date.now() + 60_000,
        chunkBytes: 4096,
        encoding: 'f32',
        delta: false,
        windowChunks: 0,
        issuedAt: Date.now(),
      };
      await rogue.publish(topics.round(), packMsg(fake), { retain: true });
      await waitFor(
        `both agents to refuse the model of round ${round}`,
        () => ['site-a', 'site-b'].every((a) => statuses.get(a)?.round === round && statuses.get(a)?.state === 'error'),
        20_000,
      );
      for (const a of ['site-a', 'site-b']) assert.match(String(statuses.get(a)!.detail), signature ? /does not verify/ : /not signed/);
    }
    agents.forEach((a, i) => {
      assert.equal(a.agent.counters.get(ErrorCodes.MODEL_SIGNATURE), 2);
      assert.equal(a.agent.transferred.down, downBefore[i], 'the fake model was refused before a byte of it was downloaded');
    });
    assert.ok(alerts.filter((e) => e.code === ErrorCodes.MODEL_SIGNATURE).length >= 4, 'each refusal raised an alert for the MES');
  } finally {
    for (const a of agents) await a.close();
    await aggregator.close();
    await rogue.close();
    await broker.close();
    dir.cleanup();
  }
});
