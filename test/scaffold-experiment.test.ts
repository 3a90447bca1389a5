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
 * SCAFFOLD as an experiment arm (`strategy: scaffold`): a tiny config (small-cnn, 16 px, 3 rounds,
 * so that round 3 trains with a c and c_i made in rounds 1 and 2), in process and over MQTT (the
 * aggregator publishes c with the round, the agent processes keep c_i in their state folders and
 * report their steps): the final weights agree bit for bit and differ from FedAvg's, and the bytes
 * per round are FedAvg's up and FedAvg's plus the variate c down.
 */

const tinyConfig = (out: string, over: Record<string, unknown>) =>
  parseConfig(
    experimentConfigSchema,
    {
      name: 'tiny-scaffold',
      out,
      seed: 5,
      data: { source: 'synthetic', size: 16, scale: 0.25 },
      model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 5 },
      pretrained: null,
      training: { epochs: 1, batchSize: 16, learningRate: 0.01, learningRateDecay: 0.9, optimizer: 'sgd', decoder: 'js' },
      rounds: 3,
      ...over,
    },
    'test config',
  );

const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

async function finalBytes(r: ExperimentResults, id: string): Promise<Buffer> {
  const modelDir = r.models.find((m) => m.id === id)!.modelDir;
  const tensors = bundleTensors(decodeBundle(await new FsModelStore(dirname(modelDir)).readBundle(Number(basename(modelDir).slice(1)))));
  return Buffer.concat(tensors.map((t) => bytesOf(t.data)));
}

test('experiment: scaffold arm, in-process and over MQTT agree bit for bit, differ from fedavg; c costs its bytes down only', async () => {
  const dir = tempDir('exp-scaffold');
  try {
    // Prepare: the federated full fine-tuning arm with SCAFFOLD, and the same with FedAvg.
    const off = { centralized: false, 'local-only': false, 'federated-random': false, 'federated-head': false };
    const arms = { ...off, 'federated-all': { strategy: 'scaffold' } };
    const plainArms = { ...off, 'federated-all': {} };

    // Execute
    const inProcess = await runExperiment(tinyConfig(join(dir.path, 'in-process'), { arms }), () => {});
    const mqtt = await runExperiment(tinyConfig(join(dir.path, 'mqtt'), { arms, mode: 'mqtt' }), () => {});
    const plain = await runExperiment(tinyConfig(join(dir.path, 'plain'), { arms: plainArms }), () => {});

    // Assert
    const id = 'federated-all';
    assert.equal(inProcess.models.find((m) => m.id === id)!.roundsRun, 3);
    assert.ok((await finalBytes(inProcess, id)).equals(await finalBytes(mqtt, id)), 'in-process and MQTT identical');
    assert.ok(!(await finalBytes(inProcess, id)).equals(await finalBytes(plain, id)), 'the control variates changed the model');
    assert.ok(existsSync(join(dir.path, 'in-process', 'arms', id, 'server-state', 'scaffold', 'v3.state')), 'c is journaled');
    const bytes = (r: ExperimentResults) => r.models.find((m) => m.id === id)!.bytes;
    const [s, f] = [bytes(inProcess), bytes(plain)];
    // Up: the update plus a `steps` field in its header (the header is padded to 8 bytes: 0 to 8 more per update).
    // Down: the model plus c (rounds 2 and 3), about the federated weights' size.
    assert.ok(s.upPerRound - f.upPerRound >= 0 && s.upPerRound - f.upPerRound <= 3 * 8, `up ${s.upPerRound} vs fedavg ${f.upPerRound}`);
    const extraDown = s.downPerRound - f.downPerRound;
    assert.ok(extraDown > 0.5 * f.upPerRound && extraDown < f.upPerRound, `down ${s.downPerRound} vs fedavg ${f.downPerRound} (update ${f.upPerRound})`);
  } finally {
    dir.cleanup();
  }
});
