import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { initialModelBundle, startAggregator } from '../../aggregator/main.js';
import { startAgent, type RunningAgent } from '../../edge-agent/main.js';
import { ErrorCodes } from '../../shared/protocol/errors.js';
import { silentLogger } from '../../shared/util/logger.js';
import { agentConfig, aggregatorConfig, captureLogger, startAedes, tempDir, tinyDataset } from '../helpers.js';

/** Fault 6: an agent's disk lets it down. It must say so and recover, never train on a bad model. */
async function withFederation(
  prepare: (dir: string, sha256: string) => void,
  check: (r: {
    logs: Record<string, unknown>[];
    agents: RunningAgent[];
    result: Awaited<ReturnType<import('../../aggregator/aggregator.js').Aggregator['run']>>;
  }) => void,
) {
  const dir = tempDir('fault-storage');
  const broker = await startAedes();
  const options = { url: broker.url, dir: dir.path, agents: ['site-a', 'site-b'], rounds: 1 };
  await tinyDataset(join(dir.path, 'data'), options.agents);
  const config = aggregatorConfig(options);
  const aggregator = await startAggregator(config, silentLogger());
  const { logger, lines } = captureLogger();
  const agents: RunningAgent[] = [];
  try {
    // The aggregator creates model version 0 when it starts its run; create it now to know its hash
    // (the run then finds it in the store).
    const v0 = await aggregator.store.save(await initialModelBundle(config, silentLogger()));
    prepare(dir.path, v0.sha256);
    for (const a of options.agents) agents.push(await startAgent(agentConfig(options, a), logger));
    const result = await aggregator.aggregator.run();
    check({ logs: lines, agents, result });
  } finally {
    for (const a of agents) await a.close();
    await aggregator.close();
    for (const a of options.agents) spawnSync('umount', [join(dir.path, a)]);
    await broker.close();
    dir.cleanup();
  }
}

test('a corrupted (or half-written) model in the agent cache is detected, deleted and downloaded again', { timeout: 120_000 }, async () => {
  await withFederation(
    (dir, sha) => {
      mkdirSync(join(dir, 'site-a', 'models'), { recursive: true });
      writeFileSync(join(dir, 'site-a', 'models', `v0-${sha.slice(0, 16)}.flb`), Buffer.from('FLB1 half a model, then the power went'));
    },
    ({ logs, agents, result }) => {
      assert.equal(result.rounds[0]!.outcome, 'aggregate');
      assert.deepEqual(result.rounds[0]!.participants, ['site-a', 'site-b']);
      assert.ok(
        logs.some((l) => l.agent === 'site-a' && /cached model is corrupt/.test(String(l.msg))),
        'the corruption was reported',
      );
      assert.ok(agents[0]!.agent.transferred.down > 0, 'site-a downloaded the model again');
    },
  );
});

const canMount = spawnSync('sh', ['-c', 'd=$(mktemp -d) && mount -t tmpfs -o size=16k tmpfs "$d" && umount "$d"']).status === 0;

test(
  'a full disk on the agent: it reports the error and keeps going from memory; no half-written model is ever used',
  { skip: canMount ? false : 'needs permission to mount a small tmpfs (root)', timeout: 120_000 },
  async () => {
    await withFederation(
      (dir) => {
        // site-a's state folder is a 16 KiB file system: the 45 KB model cannot be written to it.
        mkdirSync(join(dir, 'site-a'), { recursive: true });
        const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', join(dir, 'site-a')]);
        assert.equal(r.status, 0, String(r.stderr));
      },
      ({ logs, agents, result }) => {
        assert.equal(result.rounds[0]!.outcome, 'aggregate');
        assert.deepEqual(result.rounds[0]!.participants, ['site-a', 'site-b'], 'site-a trained and sent its update anyway');
        assert.deepEqual(Object.keys(result.rounds[1]!.baseMetrics).sort(), ['site-a', 'site-b']);
        const problems = logs.filter((l) => l.agent === 'site-a' && l.code === ErrorCodes.MODEL_STORE);
        assert.ok(
          problems.some((l) => /ENOSPC/.test(String(l.msg))),
          `the full disk was reported: ${JSON.stringify(problems)}`,
        );
        assert.ok(agents[0]!.agent.counters.get(ErrorCodes.MODEL_STORE) >= 1);
      },
    );
  },
);
