import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startAggregator } from '../../aggregator/main.js';
import { startAgent, type RunningAgent } from '../../edge-agent/main.js';
import type { Trainer } from '../../training/trainer.js';
import { sendUpdate } from '../../edge-agent/uplink.js';
import { sleep } from '../../shared/util/async.js';
import { ErrorCodes } from '../../shared/protocol/errors.js';
import { silentLogger } from '../../shared/util/logger.js';
import type { UpdateMeta } from '../../shared/protocol/messages.js';
import { MqttTransport } from '../../shared/transport/mqtt-transport.js';
import { bundleTensors, decodeBundle, encodeBundle } from '../../shared/bundle/tensor-bundle.js';
import { createTopics } from '../../shared/protocol/topics.js';
import { agentConfig, aggregatorConfig, startAedes, tempDir, tinyDataset } from '../helpers.js';

const AGENTS = ['site-a', 'site-b', 'site-c'];

/** site-c trains far too slowly in round 1 (as if its line never paused), normally afterwards. */
const straggleInRoundOne = (trainer: Trainer): Trainer => {
  let calls = 0;
  return {
    get backend() {
      return trainer.backend;
    },
    get samples() {
      return trainer.samples;
    },
    evaluate: (m) => trainer.evaluate(m),
    batchNormStatistics: (m) => trainer.batchNormStatistics(m),
    async train(model, task, names, options) {
      if (calls++ === 0) await sleep(60_000, options.signal);
      return trainer.train(model, task, names, options);
    },
  };
};

async function federation(minClients: number, rounds: number) {
  const dir = tempDir('fault-straggler');
  const broker = await startAedes();
  const options = { url: broker.url, dir: dir.path, agents: AGENTS, rounds, minClients, roundDeadlineMs: 4000 };
  await tinyDataset(join(dir.path, 'data'), AGENTS);
  const aggregator = await startAggregator({ ...aggregatorConfig(options), evaluateFinalModel: false }, silentLogger());
  const agents: RunningAgent[] = [];
  for (const a of AGENTS) agents.push(await startAgent(agentConfig(options, a), silentLogger(), a === 'site-c' ? { wrapTrainer: straggleInRoundOne } : {}));
  return {
    dir,
    broker,
    aggregator,
    async close() {
      for (const a of agents) await a.close();
      await aggregator.close();
      await broker.close();
      dir.cleanup();
    },
  };
}

test(
  'a straggler: the round closes at its deadline with the others (minClients met), and the straggler joins the next round',
  { timeout: 120_000 },
  async () => {
    const f = await federation(2, 2);
    try {
      const result = await f.aggregator.aggregator.run();
      const [r1, r2] = result.rounds;
      assert.equal(r1!.outcome, 'aggregate');
      assert.deepEqual(r1!.participants, ['site-a', 'site-b']);
      assert.match(r1!.reason!, /deadline passed: 2 of 3/);
      assert.equal(r2!.outcome, 'aggregate');
      assert.deepEqual(r2!.participants, AGENTS, 'the straggler dropped its stale work and took part in round 2');
      assert.equal(r2!.baseVersion, 1);

      // A late update for round 1 (from a copy of the straggler that missed the close) is refused cleanly.
      const topics = createTopics('fl/test');
      const late = await MqttTransport.connect({ url: f.broker.url, clientId: 'late-site-c', logger: silentLogger() });
      try {
        const base = decodeBundle(await f.aggregator.store.readBundle(0));
        const meta: UpdateMeta = {
          kind: 'update',
          agent: 'site-c',
          round: 1,
          baseVersion: 0,
          sampleCount: 9,
          epochs: 1,
          metricsBefore: null,
          metricsAfter: null,
          trainMs: 1,
          backend: 'cpu',
        };
        const before = f.aggregator.aggregator.counters.get(ErrorCodes.ROUND_CLOSED);
        const sent = await sendUpdate(late, topics, encodeBundle(bundleTensors(base), meta), silentLogger(), {
          round: 1,
          agent: 'site-c',
          chunkBytes: 4096,
          maxInflight: 4,
          ackTimeoutMs: 3000,
        });
        assert.equal(sent.ack.status, 'rejected');
        assert.equal(sent.ack.code, ErrorCodes.ROUND_CLOSED);
        assert.ok(f.aggregator.aggregator.counters.get(ErrorCodes.ROUND_CLOSED) > before);
        assert.deepEqual(await f.aggregator.store.versions(), [0, 1, 2], 'no model came of it');
      } finally {
        await late.close();
      }
    } finally {
      await f.close();
    }
  },
);

test('a straggler with minClients not met: the global model is kept, an alert says so, the federation goes on', { timeout: 120_000 }, async () => {
  const f = await federation(3, 2);
  const alerts: Record<string, unknown>[] = [];
  f.aggregator.aggregator.on('event', (e: Record<string, unknown>) => {
    if (e.type === 'alert') alerts.push(e);
  });
  try {
    const result = await f.aggregator.aggregator.run();
    const [r1, r2] = result.rounds;
    assert.equal(r1!.outcome, 'keep');
    assert.equal(r1!.newVersion, null);
    assert.ok(alerts.some((a) => a.code === 'FL_ROUND_KEPT' && /2 of 3 updates accepted, 3 needed/.test(String(a.message))));
    assert.equal(r2!.baseVersion, 0, 'round 2 starts from the kept model');
    assert.equal(r2!.outcome, 'aggregate');
    assert.deepEqual(r2!.participants, AGENTS);
  } finally {
    await f.close();
  }
});
