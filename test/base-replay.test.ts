import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { VerifiedBaseFloor } from '../edge-agent/base-model.js';
import { roundAnnouncementSchema, SUPPORTED_VERSIONS, type RoundAnnouncement } from '../shared/protocol/messages.js';
import { generateSigningKeys } from '../shared/protocol/model-signature.js';
import { createTopics } from '../shared/protocol/topics.js';
import { decodeMsgpack, packMsg } from '../shared/protocol/wire-codec.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { silentLogger } from '../shared/util/logger.js';
import { startAedes, startFederation, tempDir, waitFor } from './helpers.js';

const ref = (version: number) => ({ version, sha256: 'a'.repeat(64), bytes: 1, chunks: 1, chunkBytes: 1024, signature: null });

test('verified base floor: an older base is refused, the newest is remembered across restarts', () => {
  const dir = tempDir('base-floor');
  try {
    const file = join(dir.path, 'verified-base.json');
    const floor = new VerifiedBaseFloor(file);
    floor.check(ref(0), 'run-1');
    floor.verified(3, 'run-1');
    floor.verified(2, 'run-1');
    assert.equal(floor.version, 3);
    floor.check(ref(3), 'run-1');
    floor.check(ref(4), 'run-1');
    assert.throws(() => floor.check(ref(2), 'run-1'), /version 2 is older than version 3, already verified here: a replayed old model/);
    assert.equal(new VerifiedBaseFloor(file).version, 3, 'remembered by a restarted agent');
    assert.throws(() => new VerifiedBaseFloor(file).check(ref(2), 'run-1'), /replayed old model/, 'and its run with it');
    // A new federation run (fresh aggregator state) counts versions from 0 again: its own floor.
    floor.check(ref(0), 'run-2');
    floor.verified(0, 'run-2');
    assert.equal(floor.version, 0);
    floor.verified(1, 'run-2');
    assert.throws(() => floor.check(ref(0), 'run-2'), /version 0 is older than version 1/, 'the new run has a floor of its own');
    writeFileSync(file, 'garbage');
    assert.equal(new VerifiedBaseFloor(file).version, null);
  } finally {
    dir.cleanup();
  }
});

test('an agent refuses a round whose base is a genuinely signed model older than one it has verified (replay)', { timeout: 180_000 }, async () => {
  const dir = tempDir('base-replay');
  const broker = await startAedes();
  const keys = generateSigningKeys();
  writeFileSync(join(dir.path, 'model-signing.key'), keys.privatePem);
  writeFileSync(join(dir.path, 'model-signing.pub'), keys.publicPem);
  const topics = createTopics('fl/test');
  const watcher = await MqttTransport.connect({ url: broker.url, clientId: 'watcher', logger: silentLogger() });
  const fed = await startFederation({
    url: broker.url,
    dir: dir.path,
    agents: ['site-a'],
    rounds: 1,
    aggregator: { signingKeyFile: join(dir.path, 'model-signing.key'), evaluateFinalModel: true },
    agent: { modelPublicKeyFile: join(dir.path, 'model-signing.pub') },
  });
  try {
    const announcements: RoundAnnouncement[] = [];
    await watcher.subscribe(topics.round(), (m) => {
      if (m.payload.byteLength > 0)
        announcements.push(decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round' }));
    });
    const alerts: { code?: string; message?: string }[] = [];
    await watcher.subscribe(`${topics.event('alert')}/#`, (m) => alerts.push(JSON.parse(m.payload.toString()) as { code?: string; message?: string }));
    const result = await fed.aggregator.aggregator.run();
    assert.equal(result.rounds[0]!.outcome, 'aggregate');
    const first = announcements.find((a) => a.round === 1 && a.state === 'open')!;
    assert.equal(first.base.version, 0);
    assert.ok(first.base.signature, 'the aggregator signed version 0');
    await waitFor('the agent to have verified version 1 (the evaluation round)', () => {
      try {
        return (JSON.parse(readFileSync(join(dir.path, 'site-a', 'verified-base.json'), 'utf8')) as { version: number }).version === 1;
      } catch {
        return false;
      }
    });
    // The replay: round 1's genuinely signed announcement of version 0, as a new round.
    const replay: RoundAnnouncement = { ...first, round: 9, deadlineAt: Date.now() + 60_000, selected: ['site-a'] };
    await watcher.publish(topics.round(), packMsg(replay), { qos: 1, retain: true });
    await waitFor('the agent to refuse the replayed base', () => alerts.some((a) => a.code === 'FL_MODEL_SIGNATURE'), 30_000);
    assert.match(alerts.find((a) => a.code === 'FL_MODEL_SIGNATURE')!.message!, /version 0 is older than version 1, already verified here/);
    assert.equal(fed.agents[0]!.agent.counters.get('FL_MODEL_SIGNATURE'), 1);
  } finally {
    await watcher.close();
    await fed.stop();
    await broker.close();
    dir.cleanup();
  }
});
