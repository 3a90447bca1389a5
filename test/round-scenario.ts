import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadTf } from '../training/backend.js';
import { loadLayersModelFromDir } from '../training/model-io.js';
import { assertFedAvgResult, captureUpdates } from './federation-checks.js';
import { startFederation } from './helpers.js';

/**
 * Broker at `url` + aggregator + 2 agents, one training round and the final evaluation round.
 * With `auth`, every service logs in as itself and the observer as `auditor`.
 */
export async function oneRoundScenario(url: string, dir: string, auth?: (user: string) => { username: string; password: string }): Promise<void> {
  const observer = await captureUpdates(url, 'fl/test', auth?.('auditor') ?? {});
  const fed = await startFederation({ url, dir, agents: ['site-a', 'site-b'], rounds: 1, ...(auth ? { auth } : {}) });
  try {
    await checks(fed, observer, dir);
  } finally {
    await fed.stop();
    await observer.close();
  }
}

async function checks(fed: Awaited<ReturnType<typeof startFederation>>, observer: Awaited<ReturnType<typeof captureUpdates>>, dir: string): Promise<void> {
  const result = await fed.aggregator.aggregator.run();

  assert.equal(result.finalVersion, 1);
  const [train, evaluation] = result.rounds;
  assert.equal(train!.outcome, 'aggregate');
  assert.deepEqual(train!.participants, ['site-a', 'site-b']);
  assert.ok(train!.sampleCounts['site-a']! > 0 && train!.sampleCounts['site-b']! > train!.sampleCounts['site-a']!, 'unequal sample counts (non-IID sizes)');
  assert.equal(evaluation!.kind, 'evaluate');
  assert.deepEqual(Object.keys(evaluation!.baseMetrics).sort(), ['site-a', 'site-b'], 'both agents evaluated the new global model');
  const updates = ['site-a', 'site-b'].map((a) => observer.updates.get(`1/${a}`)!);
  assert.ok(updates.every(Boolean), 'the observer saw both updates');
  assert.deepEqual(
    updates.map((u) => u.header.meta.sampleCount),
    [train!.sampleCounts['site-a'], train!.sampleCounts['site-b']],
  );
  await assertFedAvgResult(fed.aggregator.store, 1, updates, [join(dir, 'site-a'), join(dir, 'site-b')]);

  // The stored version is a tfjs layers model that tfjs itself opens.
  const { tf } = await loadTf('cpu');
  const model = await loadLayersModelFromDir(tf, fed.aggregator.store.dir(1));
  assert.deepEqual(model.outputs[0]!.shape, [null, 4]);
  model.dispose();
  const meta = await fed.aggregator.store.get(1);
  assert.deepEqual(Object.keys(meta!.metrics).sort(), ['site-a', 'site-b'], 'per-agent metrics kept in the model meta');
}
