import assert from 'node:assert/strict';
import { test } from 'node:test';
import { join } from 'node:path';
import { pino } from 'pino';
import { startAggregator } from '../aggregator/main.js';
import { startAgent, type RunningAgent } from '../edge-agent/main.js';
import type { RoundWorkResult } from '../edge-agent/agent.js';
import { modelChunkSchema, modelManifestSchema, roundAnnouncementSchema, SUPPORTED_VERSIONS, type RoundAnnouncement } from '../shared/protocol/messages.js';
import { decodeJson, decodeMsgpack } from '../shared/protocol/wire-codec.js';
import { releasedManifestSchema } from '../shared/protocol/mes.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { silentLogger } from '../shared/util/logger.js';
import { agentConfig, aggregatorConfig, captureLogger, mosquittoAvailable, startAedes, startMosquitto, tempDir, tinyDataset, waitFor } from './helpers.js';

const ROOT = 'fl/test';
const DEADLINE_MS = 60_000;
/** Far below the deadline: a round that waited for it would take 60 s. */
const FAST_ROUND_MS = 15_000;

type Auth = ((user: string) => { username: string; password: string }) | undefined;

/** Every retained message under the root, as a late subscriber gets them (collected until 500 ms of quiet). */
async function retainedUnderRoot(url: string, auth: Auth): Promise<Map<string, Buffer>> {
  const t = await MqttTransport.connect({ url, clientId: `retained-${Date.now()}`, logger: silentLogger(), ...(auth?.('auditor') ?? {}) });
  const seen = new Map<string, Buffer>();
  let last = Date.now();
  await t.subscribe(`${ROOT}/#`, (m) => {
    if (!m.retain) return;
    last = Date.now();
    seen.set(m.topic, m.payload);
  });
  last = Date.now();
  await waitFor('the retained messages to arrive', () => Date.now() - last > 500, 20_000);
  await t.close();
  return seen;
}

/**
 * Run 1 (aggregator A, agents site-a and site-b, chunks of 2048 bytes) completes; the agents stay up.
 * A new agent, site-c, starts and reads run 1's retained `complete`. Then aggregator B starts with
 * fresh state on the same broker and root (chunks of 4096 bytes) and runs 2 training rounds and
 * the final evaluation with all three: every round must end because every agent answered, not at
 * its deadline.
 */
async function secondRunScenario(url: string, dir: string, auth: Auth): Promise<number[]> {
  const logger = pino({ level: 'silent' });
  const members = ['site-a', 'site-b', 'site-c'];
  await tinyDataset(join(dir, 'data'), members);
  const base = { url, dir, agents: members, roundDeadlineMs: DEADLINE_MS, ...(auth ? { auth } : {}) };
  const siteCLog = captureLogger();
  const agents: RunningAgent[] = [];
  const results: { agent: string; at: number; result: RoundWorkResult }[] = [];
  const completes: { agent: string; at: number; ann: RoundAnnouncement }[] = [];
  const addAgent = async (id: string) => {
    const a = await startAgent(agentConfig(base, id), id === 'site-c' ? siteCLog.logger : logger);
    a.agent.on('round-done', (result: RoundWorkResult) => results.push({ agent: id, at: Date.now(), result }));
    a.agent.on('complete', (ann: RoundAnnouncement) => completes.push({ agent: id, at: Date.now(), ann }));
    agents.push(a);
  };
  try {
    // Run 1.
    const first = await startAggregator(aggregatorConfig({ ...base, agents: ['site-a', 'site-b'], rounds: 1, chunkBytes: 2048 }), logger);
    for (const id of ['site-a', 'site-b']) await addAgent(id);
    const run1 = await first.aggregator.run();
    assert.equal(run1.finalVersion, 1);
    await first.close();
    const run1Id = (await retainedAnnouncement(url, auth))?.runId;
    assert.ok(run1Id, 'run 1 left its complete announcement retained');
    await addAgent('site-c');
    // (Read while it starts, before a listener could be added: its log says so.)
    await waitFor("site-c to read run 1's complete announcement", () => siteCLog.lines.some((l) => l.msg === 'federation complete'), 30_000);

    // Run 2: fresh state (another state folder), same broker and topic root.
    const run2Start = Date.now();
    const second = await startAggregator(
      aggregatorConfig({ ...base, rounds: 2, chunkBytes: 4096, aggregator: { stateDir: join(dir, 'aggregator-run2') } }),
      logger,
    );
    try {
      const run2 = await second.aggregator.run();
      const durations = run2.rounds.map((r) => r.durationMs ?? -1);
      console.log(`run-identity: second run on ${url}: round durations ${durations.join(', ')} ms (deadline ${DEADLINE_MS} ms)`);
      assert.deepEqual(
        run2.rounds.map((r) => r.outcome),
        ['aggregate', 'aggregate', 'evaluated'],
      );
      for (const r of run2.rounds) {
        assert.ok(r.durationMs! < FAST_ROUND_MS, `round ${r.round} took ${r.durationMs} ms: it waited for its deadline`);
        if (r.kind === 'train') assert.deepEqual(r.participants, members, `round ${r.round}: every agent sent an update`);
        else assert.deepEqual(Object.keys(r.baseMetrics).sort(), members);
      }
      // The aggregator's run ends with the last eval report; an agent reports its own end of that
      // round (and reads the complete announcement) a moment later: wait for both, then compare.
      await waitFor(
        'every agent to finish run 2',
        () =>
          members.every((id) => results.some((r) => r.at >= run2Start && r.agent === id && r.result.round === 3)) &&
          completes.filter((c) => c.at >= run2Start).length >= members.length,
        30_000,
      );
      // The agents worked on run 2's rounds only, and nothing of run 1 ended that work.
      const run2Results = results.filter((r) => r.at >= run2Start);
      for (const id of members)
        assert.deepEqual(
          run2Results.filter((r) => r.agent === id).map((r) => `${r.result.round}:${r.result.outcome}`),
          ['1:accepted', '2:accepted', '3:evaluated'],
          `${id}'s rounds in run 2`,
        );
      const run2Id = (await retainedAnnouncement(url, auth))!.runId;
      assert.notEqual(run2Id, run1Id, 'a fresh aggregator state starts a new run');
      const lateCompletes = completes.filter((c) => c.at >= run2Start);
      assert.ok(lateCompletes.length === members.length, `every agent saw run 2 complete (${lateCompletes.length})`);
      for (const c of lateCompletes) assert.equal(c.ann.runId, run2Id, `${c.agent} acted on run 2's complete only`);

      // Nothing of run 1 is left retained: the announcement and the manifest are run 2's, and every
      // model chunk is one of run 2's current version or of the version its lines run (the released
      // one keeps its chunks retained), none beyond their `total` of 4096-byte chunks.
      const retained = await retainedUnderRoot(url, auth);
      const ctx = { topic: '', what: 'retained' };
      const manifest = decodeJson(retained.get(`${ROOT}/model/latest`)!, modelManifestSchema, SUPPORTED_VERSIONS, ctx);
      assert.equal(manifest.runId, run2Id);
      const releasedPayload = retained.get(`${ROOT}/model/released`);
      const released = releasedPayload ? releasedManifestSchema.parse(JSON.parse(Buffer.from(releasedPayload).toString('utf8'))) : null;
      const kept = new Map([[manifest.version, manifest]]);
      if (released) kept.set(released.version, { ...manifest, version: released.version, sha256: released.sha256, chunks: released.chunks });
      const chunkTopics = [...retained.keys()].filter((t) => /\/model\/\d+\/\d+$/.test(t));
      const expected = [...kept.values()].reduce((n, m) => n + m.chunks, 0);
      assert.equal(chunkTopics.length, expected, `retained chunks: ${chunkTopics.join(' ')}`);
      for (const topic of chunkTopics) {
        const chunk = decodeMsgpack(retained.get(topic)!, modelChunkSchema, SUPPORTED_VERSIONS, ctx);
        const of = kept.get(chunk.version);
        assert.ok(of, `${topic}: version ${chunk.version} is neither the current nor the released one`);
        assert.equal(chunk.sha256, of.sha256, topic);
        assert.equal(chunk.chunkBytes, 4096, topic);
      }
      return durations;
    } finally {
      await second.close();
    }
  } finally {
    for (const a of agents) await a.close().catch(() => undefined);
  }
}

async function retainedAnnouncement(url: string, auth: Auth): Promise<RoundAnnouncement | null> {
  const payload = (await retainedUnderRoot(url, auth)).get(`${ROOT}/round`);
  return payload ? decodeMsgpack(payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: `${ROOT}/round`, what: 'round' }) : null;
}

test('a second federation run with fresh state on the same embedded broker completes every round at once', { timeout: 300_000 }, async (t) => {
  const dir = tempDir('run-identity-aedes');
  const broker = await startAedes();
  t.after(async () => {
    await broker.close();
    dir.cleanup();
  });
  await secondRunScenario(broker.url, dir.path, undefined);
});

const bin = mosquittoAvailable();

test(
  'a second federation run with fresh state on the same Mosquitto (logins and ACL on) completes every round at once',
  { skip: bin ? false : 'mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)', timeout: 300_000 },
  async (t) => {
    const dir = tempDir('run-identity-mosquitto');
    const broker = await startMosquitto(bin!, dir.path);
    t.after(async () => {
      await broker.stop();
      dir.cleanup();
    });
    await secondRunScenario(broker.url, dir.path, broker.auth.credentials);
  },
);
