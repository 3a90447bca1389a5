import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FsModelStore } from '../aggregator/model-store.js';
import { experimentConfigSchema } from '../experiment/config.js';
import { runExperiment, type ExperimentResults } from '../experiment/runner.js';
import { parseConfig } from '../shared/config/config-file.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { tempDir } from './helpers.js';

/**
 * The experiment's `strategy` option per federated arm: a tiny config (small-cnn, 16 px, 2 rounds)
 * with a server optimizer on one arm and FedProx on the other, in process (the aggregator's
 * strategies from the registry) and over MQTT (the aggregator process configured with them): both
 * modes give the same final weights bit for bit, and the strategies change the result against FedAvg.
 */

const tinyConfig = (out: string, over: Record<string, unknown>) =>
  parseConfig(
    experimentConfigSchema,
    {
      name: 'tiny-strategies',
      out,
      seed: 5,
      data: { source: 'synthetic', size: 16, scale: 0.25 },
      model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 5 },
      pretrained: null,
      training: { epochs: 1, batchSize: 16, learningRate: 0.002, learningRateDecay: 0.9, optimizer: 'adam', decoder: 'js' },
      rounds: 2,
      ...over,
    },
    'test config',
  );

const loadFinal = async (modelDir: string) =>
  bundleTensors(decodeBundle(await new FsModelStore(dirname(modelDir)).readBundle(Number(basename(modelDir).slice(1)))));
const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

async function finalBytes(r: ExperimentResults, id: string): Promise<Buffer> {
  return Buffer.concat((await loadFinal(r.models.find((m) => m.id === id)!.modelDir)).map((t) => bytesOf(t.data)));
}

test('experiment: strategy per federated arm (fedadam, fedprox), in-process and over MQTT agree bit for bit and differ from fedavg', async () => {
  const dir = tempDir('exp-strategies');
  try {
    // Prepare: two federated arms with a strategy each, and the same arms with plain FedAvg.
    const off = { centralized: false, 'local-only': false, 'federated-random': false };
    const arms = {
      ...off,
      'federated-all': { strategy: 'fedadam', serverOptimizer: { learningRate: 0.003 } },
      'federated-head': { strategy: 'fedprox', proxMu: 1 },
    };
    const plainArms = { ...off, 'federated-all': {}, 'federated-head': {} };

    // Execute
    const inProcess = await runExperiment(tinyConfig(join(dir.path, 'in-process'), { arms }), () => {});
    const mqtt = await runExperiment(tinyConfig(join(dir.path, 'mqtt'), { arms, mode: 'mqtt' }), () => {});
    const plain = await runExperiment(tinyConfig(join(dir.path, 'plain'), { arms: plainArms }), () => {});

    // Assert
    for (const id of ['federated-all', 'federated-head']) {
      assert.equal(inProcess.models.find((m) => m.id === id)!.roundsRun, 2);
      assert.ok((await finalBytes(inProcess, id)).equals(await finalBytes(mqtt, id)), `${id}: in-process and MQTT identical`);
      assert.ok(!(await finalBytes(inProcess, id)).equals(await finalBytes(plain, id)), `${id}: the strategy changed the model`);
    }
    assert.ok(existsSync(join(dir.path, 'in-process', 'arms', 'federated-all', 'server-state', 'server-optimizer', 'v2.state')), 'fedadam kept its state');
  } finally {
    dir.cleanup();
  }
});

test('experiment config: an unknown strategy name is refused with the known ones', () => {
  assert.throws(() => tinyConfig('/tmp/never', { arms: { 'federated-all': { strategy: 'fedsgd' } } }), /must be one of fedavg, .*fedadam/);
});
