import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pretrainBase } from '../training/pretrain.js';
import { readWeightsFromDir } from '../training/pretrained.js';
import type { EvalMetrics } from '../shared/protocol/messages.js';
import { tempDir, tinyDataset, tinyPretrainModel } from './helpers.js';

// `fedline pretrain --eval-each-epoch`: the held-out metrics after every epoch, training unchanged.
const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];

test('pretrainBase onEpochHeldOut: every epoch judged on the held-out split, the last as the final metrics; the weights as without it', async () => {
  const dir = tempDir('pretrain-epoch-eval');
  try {
    await tinyDataset(dir.path, ['ref'], 6, 16);
    const model = tinyPretrainModel();
    const seen: { epoch: number; m: EvalMetrics }[] = [];
    const run = (out: string, watch: boolean) =>
      pretrainBase({
        dataDir: join(dir.path, 'ref'),
        model,
        epochs: 3,
        batchSize: 8,
        learningRate: 0.01,
        augmentation: { flip: 'both', brightness: 0.1, contrast: 0.2, rotationDeg: 10 },
        out: join(dir.path, out),
        ...(watch ? { onEpochHeldOut: (epoch: number, m: EvalMetrics) => void seen.push({ epoch, m }) } : {}),
      });
    const watched = await run('watched', true);
    const plain = await run('plain', false);
    assert.deepEqual(
      seen.map((s) => s.epoch),
      [1, 2, 3],
      'once after every epoch, numbered from 1',
    );
    const heldOut = watched.metrics.samples;
    assert.ok(heldOut > 0 && seen.every((s) => s.m.samples === heldOut && s.m.confusion.length === CLASSES.length), 'each on the whole held-out split');
    assert.deepEqual(seen[2]!.m.confusion, watched.metrics.confusion, "the last epoch's is the final evaluation");
    assert.deepEqual(watched.metrics, plain.metrics, 'the same final metrics as without it');
    const [a, b] = await Promise.all([readWeightsFromDir(join(dir.path, 'watched')), readWeightsFromDir(join(dir.path, 'plain'))]);
    assert.deepEqual([...a.keys()], [...b.keys()]);
    for (const [name, w] of a) assert.deepEqual(w.data, b.get(name)!.data, `${name}: the evaluations change no weight or statistic`);
  } finally {
    dir.cleanup();
  }
});
