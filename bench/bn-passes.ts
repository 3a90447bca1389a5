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

/**
 * How many statistics passes the pooled BN statistics need: for a model with averaged statistics
 * (e.g. an experiment's federated-all/bn-average final model) and the experiment's sites, the
 * statistics after 1..L passes against the exact ones (L passes, L = BN layers), per layer:
 * the largest relative difference of the moving variance and of the moving mean (in units of the
 * exact standard deviation). Also the averaged statistics the model came with.
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
  for (const id of sites) {
    const data = await loadDataset({
      dir: join(dataDir, id),
      classes: model.meta.classes,
      inputShape: model.meta.inputShape as [number, number, number],
      testFraction,
      splitSeed,
    });
    participants.push({ id, trainer: new TfjsTrainer(runtime, data, 1) });
  }
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
  for (let p = 1; p < layers.length; p++) report(`${p} pass${p > 1 ? 'es' : ''}`, (await reestimateStatistics(model, participants, p)).model);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
