import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { startAggregator } from '../aggregator/main.js';
import { crc32 } from 'node:zlib';
import { ackSchema, PROTOCOL_VERSION, roundAnnouncementSchema, SUPPORTED_VERSIONS, type AckMsg } from '../shared/protocol/messages.js';
import { createTopics } from '../shared/protocol/topics.js';
import { decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { silentLogger } from '../shared/util/logger.js';
import { aggregatorConfig, startAedes, startFederation, tempDir, waitFor } from './helpers.js';
import { mesObserver } from './mes-observer.js';

const topics = createTopics('fl/test');

function chunkMsg(round: number, agent: string, upload: string, o: { chunkBytes: number; bundleBytes: number; seq?: number; badCrc?: boolean }) {
  const data = Buffer.alloc(Math.min(o.chunkBytes, o.bundleBytes), 7);
  return packMsg({
    v: PROTOCOL_VERSION,
    type: 'update-chunk',
    round,
    agent,
    upload,
    seq: o.seq ?? 0,
    total: Math.ceil(o.bundleBytes / o.chunkBytes),
    bundleBytes: o.bundleBytes,
    chunkBytes: o.chunkBytes,
    crc32: (crc32(data) ^ (o.badCrc ? 1 : 0)) >>> 0,
    data,
  });
}

test(
  'refused chunks and uploads are acked with their code, the round record keeps every refused attempt, and each event is published once',
  { timeout: 180_000 },
  async (t) => {
    const dir = tempDir('refusal-acks');
    const broker = await startAedes();
    const observer = await mesObserver(broker.url);
    // A client that speaks for site-a before site-a's real update (Aedes without logins lets it).
    const rogue = await MqttTransport.connect({ url: broker.url, clientId: 'rogue', logger: silentLogger() });
    const acks: AckMsg[] = [];
    await rogue.subscribe(topics.acksFor('site-a'), (m) => acks.push(decodeMsgpack(m.payload, ackSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'ack' })));
    let poked = false;
    await rogue.subscribe(topics.round(), (m) => {
      if (poked || m.payload.byteLength === 0) return;
      const ann = decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round' });
      if (ann.state !== 'open' || ann.kind !== 'train') return;
      poked = true;
      const r = ann.round;
      const send = (round: number, payload: Buffer) => void rogue.publish(topics.update(round, 'site-a'), payload);
      send(r, chunkMsg(r, 'site-a', 'wrong-size', { chunkBytes: 1000, bundleBytes: 3000 }));
      send(r, chunkMsg(r, 'site-a', 'wrong-size', { chunkBytes: 1000, bundleBytes: 3000, seq: 1 }));
      send(r, chunkMsg(r, 'site-a', 'damaged', { chunkBytes: ann.chunkBytes, bundleBytes: 3 * ann.chunkBytes, seq: 1, badCrc: true }));
      for (let seq = 0; seq < 3; seq++) send(r + 50, chunkMsg(r + 50, 'site-a', 'late', { chunkBytes: ann.chunkBytes, bundleBytes: 3 * ann.chunkBytes, seq }));
    });
    // site-x is a member, online and selected, but never answers: the round closes at its deadline,
    // not when site-a's refused attempt and site-b's update happen to be in before site-a's real one.
    const xStatus = { v: 1, agent: 'site-x', state: 'idle', round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() };
    await rogue.publish(topics.status('site-x'), encodeJson(xStatus), { retain: true });
    const fed = await startFederation({
      url: broker.url,
      dir: dir.path,
      agents: ['site-a', 'site-b'],
      extraMembers: ['site-x'],
      minClients: 2,
      rounds: 1,
      roundDeadlineMs: 40_000,
      aggregator: { evaluateFinalModel: false },
    });
    t.after(async () => {
      await fed.stop();
      await rogue.close();
      await observer.close();
      await broker.close();
      dir.cleanup();
    });
    const result = await fed.aggregator.aggregator.run();
    const [train] = result.rounds;
    assert.ok(poked, 'the rogue chunks went out while round 1 was open');
    assert.equal(train!.outcome, 'aggregate');
    assert.deepEqual(train!.participants, ['site-a', 'site-b'], "site-a's real update was accepted after its refused attempt");
    assert.deepEqual(train!.failures, []);

    // Acked with their codes, each refused upload once.
    // (Flow-control progress acks aside: the damaged upload is still in progress when others end.)
    const about = (upload: string) => acks.filter((a) => a.upload === upload && a.status !== 'progress');
    await waitFor('the refusal acks', () => about('wrong-size').length > 0 && about('damaged').length > 0 && about('late').length > 0, 10_000);
    assert.deepEqual(
      about('wrong-size').map((a) => [a.status, a.code]),
      [['rejected', 'FL_CHUNK_MISMATCH']],
    );
    assert.deepEqual(
      about('damaged').map((a) => [a.status, a.code, a.missing]),
      [['incomplete', 'FL_CHUNK_CRC', [1]]],
    );
    assert.deepEqual(
      about('late').map((a) => [a.status, a.code, a.round]),
      [['rejected', 'FL_ROUND_CLOSED', 51]],
    );

    // The round record keeps the refused attempt although site-a's later one was accepted.
    assert.deepEqual(
      (train!.refusals ?? []).map((r) => [r.agent, r.upload, r.code]),
      [['site-a', 'wrong-size', 'FL_CHUNK_MISMATCH']],
    );
    // The event goes out as the round closes; the MES may read it a moment after run() returns.
    await waitFor('round-completed at the MES', () => observer.ofType('round-completed').some((e) => e.round === train!.round), 15_000);
    const completed = observer.ofType('round-completed').find((e) => e.round === train!.round);
    assert.deepEqual(completed?.refusals, train!.refusals, 'the MES gets the refusals in round-completed');

    // Each event once: no agent reports the same state twice in a row, every round starts and completes once.
    await waitFor('the last events', () => observer.ofType('federation-completed').length === 1, 10_000);
    for (const agent of ['site-a', 'site-b']) {
      const states = observer.events
        .filter((e) => e.event.type === 'agent-state' && e.event.agent === agent)
        .map((e) => `${String(e.event.round)}:${String(e.event.state)}`);
      for (let i = 1; i < states.length; i++) assert.notEqual(states[i], states[i - 1], `${agent} reported ${states[i]} twice: ${states.join(' ')}`);
      assert.deepEqual(
        states.filter((s) => s.startsWith('1:')),
        ['1:downloading', '1:evaluating', '1:training', '1:uploading', '1:idle'],
        `${agent}'s states in round 1`,
      );
    }
    assert.deepEqual(
      observer.ofType('round-started').map((e) => e.round),
      [1],
    );
    assert.deepEqual(
      observer.ofType('round-completed').map((e) => e.round),
      [1],
    );
    assert.deepEqual(observer.invalid, []);
  },
);

test('no MaxListenersExceededWarning while the aggregator waits for an agent that is offline', { timeout: 120_000 }, async (t) => {
  const dir = tempDir('offline-listeners');
  const broker = await startAedes();
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  process.on('warning', onWarning);
  const config = aggregatorConfig({ url: broker.url, dir: dir.path, agents: ['site-a', 'site-b'], waitForAgentsMs: 1000 });
  const aggregator = await startAggregator(config, pino({ level: 'silent' }));
  const present = await MqttTransport.connect({ url: broker.url, clientId: 'site-a-status', logger: silentLogger() });
  t.after(async () => {
    process.off('warning', onWarning);
    await aggregator.close();
    await present.close();
    await broker.close();
    dir.cleanup();
  });
  // site-a is online, site-b never comes: the aggregator waits (2 of 2 needed), checking every second.
  const status = { v: 1, agent: 'site-a', state: 'idle', round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() };
  await present.publish(topics.status('site-a'), encodeJson(status), { retain: true });
  const run = aggregator.aggregator.run();
  const alerts: unknown[] = [];
  aggregator.aggregator.on('event', (e: { type: string }) => (e.type === 'alert' ? alerts.push(e) : undefined));
  await waitFor('the waiting alert', () => alerts.length > 0, 30_000);
  // 15 more checks than the default listener limit of 10 allows, were each to leave one behind.
  const until = Date.now() + 25_000;
  await waitFor('25 s of waiting', () => Date.now() > until, 40_000, 200);
  assert.deepEqual(
    warnings.map((w) => `${w.name}: ${w.message}`),
    [],
  );
  await aggregator.close();
  await run.catch(() => undefined);
});
