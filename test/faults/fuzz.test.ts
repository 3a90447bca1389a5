import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { encodeJson, packMsg } from '../../shared/protocol/wire-codec.js';
import { silentLogger } from '../../shared/util/logger.js';
import { MqttTransport } from '../../shared/transport/mqtt-transport.js';
import { createTopics } from '../../shared/protocol/topics.js';
import { assertFedAvgResult, captureUpdates } from '../federation-checks.js';
import { captureLogger, startAedes, startFederation, tempDir, waitFor } from '../helpers.js';

const SHA = 'ab'.repeat(32);
const root = createTopics('fl/test');

/** Valid messages of every kind fedline exchanges: the seeds that the mutators break. */
const validSamples: Record<string, unknown>[] = [
  {
    v: 1,
    type: 'update-chunk',
    round: 1,
    agent: 'site-a',
    seq: 0,
    total: 2,
    bundleBytes: 8,
    chunkBytes: 4,
    sha256: SHA,
    crc32: 1,
    data: Buffer.from([1, 2, 3, 4]),
  },
  { v: 1, type: 'update-done', round: 1, agent: 'site-a', total: 2, sha256: SHA },
  {
    v: 1,
    type: 'eval',
    round: 1,
    agent: 'site-a',
    baseVersion: 0,
    metrics: { samples: 1, loss: null, accuracy: 1, balancedAccuracy: 1, confusion: [[1]], precision: [1], recall: [1] },
    downloadedBytes: 0,
  },
  { v: 1, type: 'ack', round: 1, agent: 'site-a', status: 'accepted', sha256: SHA, code: null, reason: null, missing: [] },
  { v: 1, type: 'model-chunk', version: 0, seq: 0, total: 1, bundleBytes: 4, chunkBytes: 4, sha256: SHA, crc32: 1, data: Buffer.from([1, 2, 3, 4]) },
];

/**
 * Payloads that are invalid by construction, so that every one of them must be refused exactly
 * once: random bytes, random msgpack values, truncated valid messages, valid messages of an
 * unknown protocol version.
 */
const invalidPayload = fc.oneof(
  fc.uint8Array({ minLength: 1, maxLength: 300 }).map((b) => Buffer.from(b)),
  fc.anything({ maxDepth: 3 }).map((x) => packMsg(x)),
  fc
    .record({ v: fc.integer({ min: 2, max: 1000 }), type: fc.constantFrom('update-chunk', 'update-done', 'eval', 'ack', 'model-chunk', 'round') })
    .map((x) => packMsg(x)),
  fc.tuple(fc.constantFrom(...validSamples), fc.integer({ min: 1, max: 30 })).map(([m, cut]) => {
    const bytes = packMsg(m);
    return bytes.subarray(0, Math.max(1, bytes.length - cut));
  }),
  fc.tuple(fc.constantFrom(...validSamples), fc.integer({ min: 2, max: 99 })).map(([m, v]) => packMsg({ ...m, v })),
);

const aggregatorTopic = fc.oneof(
  fc.tuple(fc.constantFrom(0, 1, 2, 99), fc.constantFrom('site-a', 'site-b', 'mallory', 'x.y-z')).map(([r, a]) => root.update(r, a)),
  fc.constantFrom('site-a', 'mallory').map((a) => root.status(a)),
);
const agentTopic = fc.oneof(
  fc.constant(root.round()),
  fc.tuple(fc.constantFrom(0, 1), fc.nat({ max: 20 })).map(([v, s]) => root.modelChunk(v, s)),
  fc.tuple(fc.constantFrom(1, 2), fc.constantFrom('site-a', 'site-b')).map(([r, a]) => root.ack(r, a)),
);

test(
  'fuzz: random and mutated messages on every topic during a live round: no crash, no state change, every rejection counted and logged with its sender',
  { timeout: 180_000 },
  async () => {
    const dir = tempDir('fault-fuzz');
    const broker = await startAedes();
    const observer = await captureUpdates(broker.url);
    const { logger, lines } = captureLogger();
    const fed = await startFederation({
      url: broker.url,
      dir: dir.path,
      agents: ['site-a', 'site-b'],
      rounds: 2,
      logger,
      agent: { ackTimeoutMs: 2000 } as never,
    });
    const fuzzer = await MqttTransport.connect({ url: broker.url, clientId: 'fuzzer', logger: silentLogger() });
    const aggregator = fed.aggregator.aggregator;
    // Status topics carry JSON: garbage JSON for them (an empty payload only clears a retained message).
    const toAggregator = fc
      .sample(fc.tuple(aggregatorTopic, invalidPayload, fc.string({ minLength: 1, maxLength: 80 })), { numRuns: 400, seed: 42 })
      .map(([topic, payload, text]) => ({
        topic,
        payload: topic.endsWith('/status') ? (/^[[{]/.test(text) ? encodeJson({ v: 1, agent: 42, text }) : Buffer.from(text)) : payload,
      }));
    const toAgents = fc.sample(fc.tuple(agentTopic, invalidPayload), { numRuns: 400, seed: 7 }).map(([topic, payload]) => ({ topic, payload }));
    // Refusals are counted under their error code (FL_*); other counters count normal traffic.
    const refusals = () => Object.entries(aggregator.counters.toJSON()).reduce((sum, [code, n]) => (code.startsWith('FL_') ? sum + n : sum), 0);
    const refusalsBefore = refusals();
    const agentCountersBefore = fed.agents.map((a) => a.agent.counters.total());
    let sentToAggregator = 0;
    let sentToRoundTopic = 0;
    try {
      const started = new Promise<void>((resolve) => aggregator.once('event', () => resolve()));
      const run = aggregator.run();
      // Fuzz while the federation works, from its first event on (the aggregator has subscribed by
      // then): interleave both streams, a few messages per tick.
      await started;
      for (let i = 0; i < Math.max(toAggregator.length, toAgents.length); i++) {
        const a = toAggregator[i];
        const b = toAgents[i];
        if (a) {
          await fuzzer.publish(a.topic, a.payload);
          sentToAggregator++;
        }
        if (b) {
          await fuzzer.publish(b.topic, b.payload);
          if (b.topic === root.round()) sentToRoundTopic++;
        }
        if (i % 20 === 0) await new Promise((r) => setTimeout(r, 10));
      }
      const result = await run;

      // Nothing changed the federation's course: both rounds aggregated the two honest updates.
      for (const r of result.rounds.filter((x) => x.kind === 'train')) {
        assert.equal(r.outcome, 'aggregate');
        assert.deepEqual(r.participants, ['site-a', 'site-b']);
        assert.deepEqual(r.failures, []);
        await assertFedAvgResult(
          fed.aggregator.store,
          r.newVersion!,
          ['site-a', 'site-b'].map((a) => observer.updates.get(`${r.round}/${a}`)!),
          [],
        );
      }
      // Every fuzz message to the aggregator was refused exactly once, and logged with topic and sender.
      await waitFor('the aggregator to count every fuzz message', () => refusals() - refusalsBefore >= sentToAggregator, 10_000);
      const rejected = refusals() - refusalsBefore;
      assert.equal(rejected, sentToAggregator, `counters: ${JSON.stringify(aggregator.counters.toJSON())}`);
      const logged = lines.filter((l) => l.module === 'aggregator' && typeof l.code === 'string' && typeof l.topic === 'string');
      assert.equal(logged.length, sentToAggregator, 'one log line per refusal');
      for (const l of logged) {
        const agentInTopic = /\/(?:update|agent)\/([^/]+)/.exec(String(l.topic))?.[1] ?? /\/agent\/([^/]+)\/status/.exec(String(l.topic))?.[1];
        if (agentInTopic) assert.equal(l.agent, agentInTopic, `sender logged for ${l.topic}`);
      }
      // The agents refused every garbage announcement (and whatever garbage reached their downloads and acks).
      fed.agents.forEach((a, i) =>
        assert.ok(a.agent.counters.total() - agentCountersBefore[i]! >= sentToRoundTopic, `${a.agent.agentId} counted the garbage announcements`),
      );
    } finally {
      await fuzzer.close();
      await fed.stop();
      await observer.close();
      await broker.close();
      dir.cleanup();
    }
  },
);
