import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { FsModelStore } from '../aggregator/model-store.js';
import { encodeBundle } from '../shared/bundle/tensor-bundle.js';
import type { EvalMetrics, ModelMeta } from '../shared/protocol/messages.js';
import { tempDir } from './helpers.js';

/**
 * Eval metrics of many agents arriving at once (aggregator/model-store.ts recordMetrics): every
 * agent's metrics end up in the version's meta.json, each call resolves once its metrics are on
 * disk, and the writes are batched rather than one rewrite of meta.json per agent.
 */

const metrics = (samples: number): EvalMetrics => ({
  samples,
  loss: 0.5,
  accuracy: 0.9,
  balancedAccuracy: 0.85,
  confusion: [
    [9, 1],
    [1, 9],
  ],
  precision: [0.9, 0.9],
  recall: [0.9, 0.9],
});

test('300 agents recording metrics within a few turns: all kept, each on disk when its call resolves', async (t) => {
  // Arrange
  const dir = tempDir('model-store-metrics');
  t.after(() => dir.cleanup());
  const store = new FsModelStore(join(dir.path, 'models'));
  const meta: ModelMeta = {
    kind: 'model',
    version: 0,
    round: 0,
    topology: { t: 1 },
    headTensors: ['w'],
    classes: ['A', 'B'],
    inputShape: [8, 8, 1],
    normalization: 'unit',
    createdAt: 5,
  };
  await store.save(encodeBundle([{ name: 'w', shape: [4], dtype: 'float32', data: new Float32Array(4) }], meta));
  const metaPath = join(store.dir(0), 'meta.json');
  const onDisk = () => (JSON.parse(readFileSync(metaPath, 'utf8')) as { metrics: Record<string, EvalMetrics> }).metrics;
  const late: string[] = [];
  const calls: Promise<unknown>[] = [];
  // Act: one agent per turn, as eval reports read one by one from the socket
  for (let i = 0; i < 300; i++) {
    const agent = `agent-${i}`;
    calls.push(store.recordMetrics(0, agent, metrics(i)).then(() => onDisk()[agent]?.samples !== i && late.push(agent)));
    await nextTurn();
  }
  await Promise.all(calls);
  // Assert
  const kept = onDisk();
  assert.equal(Object.keys(kept).length, 300);
  assert.deepEqual(kept['agent-299'], metrics(299));
  assert.deepEqual(late, [], 'a call resolved before its metrics were in meta.json');
  assert.deepEqual((await store.get(0))!.metrics['agent-7'], metrics(7));
});
