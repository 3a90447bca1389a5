import { basename, dirname, join } from 'node:path';
import { FsModelStore } from '../aggregator/model-store.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { batchNormLayers } from '../shared/fl/bn-statistics.js';
import { modelMetaSchema, type ModelMeta } from '../shared/protocol/messages.js';
import { loadTf } from '../training/backend.js';
import { loadDataset } from '../training/image-folder.js';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import type { GlobalModel } from '../training/trainer.js';
import { reestimateStatistics } from '../experiment/batch-norm-rounds.js';
import { evaluateModel } from '../experiment/sets.js';
import { loadImageSet, type ImageSet } from '../training/image-folder.js';

/**
 * How many statistics passes the pooled BN statistics need: for a model with averaged statistics
 * (e.g. an experiment's federated-all/bn-average final model) and the experiment's sites, the
 * statistics after 1..L passes against the exact ones (L passes, L = BN layers), per layer:
 * the largest relative difference of the moving variance and of the moving mean (in units of the
 * exact standard deviation). Also the averaged statistics the model came with. Then the same
 * weights with the averaged, the 1-pass and the exact statistics on every site's test split and
 * the external set (DATA_DIR/external), which isolates what the statistics alone do.
 *
 *   node dist/bench/bn-passes.js MODEL_VERSION_DIR DATA_DIR [SITE...] [--split-seed N] [--test-fraction F]
 *   e.g. node dist/bench/bn-passes.js experiment-out/batchnorm/arms/federated-all/bn-average/models/v5 experiment-out/batchnorm/data client1 client2 client3
 */
async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string, dflt: number) => {
    const i = args.indexOf(name);
    if (i < 0) return dflt;
    const v = Number(args[i + 1]);
    args.splice(i, 2);
    return v;
  };
  const splitSeed = opt('--split-seed', 42);
  const testFraction = opt('--test-fraction', 0.2);
  const [modelDir, dataDir, ...sites] = args;
  if (!modelDir || !dataDir || sites.length === 0) throw new Error('usage: bn-passes MODEL_VERSION_DIR DATA_DIR SITE...');
  const store = new FsModelStore(dirname(modelDir));
  const d = decodeBundle<ModelMeta>(await store.readBundle(Number(basename(modelDir).slice(1))), modelMetaSchema);
  const model: GlobalModel = { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
  const runtime = await loadTf('auto');
  const participants = [];
  const sets: { id: string; set: ImageSet }[] = [];
  for (const id of sites) {
    const data = await loadDataset({
      dir: join(dataDir, id),
      classes: model.meta.classes,
      inputShape: model.meta.inputShape as [number, number, number],
      testFraction,
      splitSeed,
    });
    participants.push({ id, trainer: new TfjsTrainer(runtime, data, 1) });
    sets.push({ id, set: data.test });
  }
  const inputShape = model.meta.inputShape as [number, number, number];
  sets.push({ id: 'external', set: (await loadImageSet({ dir: join(dataDir, 'external'), classes: model.meta.classes, inputShape })).set });
  const layers = batchNormLayers(model.meta.topology);
  const exact = (await reestimateStatistics(model, participants, layers.length)).model;
  const stat = (m: GlobalModel, layer: string, w: string) => m.tensors.find((t) => t.name === `${layer}/moving_${w}`)!.data;
  const report = (label: string, m: GlobalModel) => {
    const cells = layers.map((l) => {
      const [ev, em, gv, gm] = [stat(exact, l, 'variance'), stat(exact, l, 'mean'), stat(m, l, 'variance'), stat(m, l, 'mean')];
      let dv = 0;
      let dm = 0;
      for (let c = 0; c < ev.length; c++) {
        dv = Math.max(dv, Math.abs(gv[c]! - ev[c]!) / ev[c]!);
        dm = Math.max(dm, Math.abs(gm[c]! - em[c]!) / Math.sqrt(ev[c]!));
      }
      return `${(100 * dv).toFixed(2)}%/${dm.toFixed(3)}`;
    });
    console.log(`| ${label} | ${cells.join(' | ')} |`);
  };
  console.log(`model ${modelDir}, sites ${sites.join(', ')}; per BN layer: max relative error of the variance / max error of the mean in exact std units`);
  console.log(`| statistics | ${layers.join(' | ')} |`);
  console.log(`|---|${layers.map(() => '---:').join('|')}|`);
  report('as the model has them (averaged)', model);
  const onePass = (await reestimateStatistics(model, participants, 1)).model;
  for (let p = 1; p < layers.length; p++)
    report(`${p} pass${p > 1 ? 'es' : ''}`, p === 1 ? onePass : (await reestimateStatistics(model, participants, p)).model);
  console.log('');
  console.log('the same weights, balanced accuracy in % per test set:');
  console.log(`| statistics | ${sets.map((s) => s.id).join(' | ')} |`);
  console.log(`|---|${sets.map(() => '---:').join('|')}|`);
  for (const [label, m] of [
    ['averaged', model],
    ['1 pass', onePass],
    [`exact (${layers.length} passes)`, exact],
  ] as const) {
    const r = await evaluateModel(runtime.tf, m, sets);
    console.log(`| ${label} | ${sets.map((s) => (100 * r[s.id]!.balancedAccuracy).toFixed(1)).join(' | ')} |`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
