import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pretrainBase, PRETRAIN_INFO_FILE } from '../training/pretrain.js';
import { readWeightsFromDir } from '../training/pretrained.js';
import { tempDir, tinyDataset, tinyPretrainModel } from './helpers.js';

// `fedline pretrain --keep-best` (pretrained.keepBest): the saved weights are those of the epoch with
// the best held-out balanced accuracy, not the last epoch's.
test("pretrainBase keepBest: saves the best held-out epoch's weights and records it in pretrain.json", async () => {
  const dir = tempDir('pretrain-keep-best');
  try {
    await tinyDataset(dir.path, ['ref'], 6, 16);
    const model = tinyPretrainModel();
    const EPOCHS = 6;
    const run = (out: string, epochs: number, keepBest: boolean) =>
      pretrainBase({
        dataDir: join(dir.path, 'ref'),
        model,
        epochs,
        batchSize: 8,
        // A high rate: the held-out accuracy goes up and down, so the best epoch is not the last.
        learningRate: 0.05,
        out: join(dir.path, out),
        keepBest,
      });
    const kept = await run('kept', EPOCHS, true);
    const best = kept.best;
    assert.ok(best, 'keepBest reports the epoch it kept');
    const history = kept.heldOutByEpoch;
    assert.deepEqual(
      history.map((h) => h.epoch),
      [1, 2, 3, 4, 5, 6],
      'every epoch judged',
    );
    const top = Math.max(...history.map((h) => h.balancedAccuracy));
    assert.equal(best.epoch, history.find((h) => h.balancedAccuracy === top)!.epoch, 'the earliest epoch with the best balanced accuracy');
    assert.ok(
      best.epoch < EPOCHS,
      `this setting must have its best epoch before the last, or the test proves nothing (history ${history.map((h) => h.balancedAccuracy.toFixed(3)).join(', ')})`,
    );
    assert.ok(top > history[EPOCHS - 1]!.balancedAccuracy, 'strictly better than the last epoch');
    assert.equal(kept.metrics.balancedAccuracy, top, "the returned metrics are the kept epoch's");
    assert.equal(best.lastEpoch, EPOCHS);
    assert.equal(best.lastMetrics.balancedAccuracy, history[EPOCHS - 1]!.balancedAccuracy, "the last epoch's metrics kept for comparison");

    const info = JSON.parse(readFileSync(join(dir.path, 'kept', PRETRAIN_INFO_FILE), 'utf8')) as {
      keepBest: boolean;
      best: { epoch: number; metrics: { balancedAccuracy: number } };
      metrics: { balancedAccuracy: number };
      heldOutByEpoch: { epoch: number }[];
    };
    assert.equal(info.keepBest, true);
    assert.equal(info.best.epoch, best.epoch, 'pretrain.json names the kept epoch');
    assert.equal(info.metrics.balancedAccuracy, top, "pretrain.json's metrics are the kept epoch's");
    assert.equal(info.heldOutByEpoch.length, EPOCHS, 'and every epoch of the run');

    // The same training stopped at the kept epoch (same seed, order and rate): the very same weights.
    await run('stopped', best.epoch, false);
    const last = await run('last', EPOCHS, false);
    assert.equal(last.best, null, 'without keepBest nothing is kept');
    const [k, s, l] = await Promise.all(['kept', 'stopped', 'last'].map((d) => readWeightsFromDir(join(dir.path, d))));
    assert.deepEqual([...k!.keys()], [...s!.keys()]);
    for (const [name, w] of k!) assert.deepEqual(w.data, s!.get(name)!.data, `${name}: the kept epoch's weights`);
    assert.ok(
      [...k!].some(([name, w]) => w.data.some((v, i) => v !== l!.get(name)!.data[i])),
      "not the last epoch's weights",
    );
  } finally {
    dir.cleanup();
  }
});
