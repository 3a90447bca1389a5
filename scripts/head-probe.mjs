// Diagnostic for docs/experiment.md (Head-only): a head trained centrally on every site's training images
// pooled, on a frozen pretrained base (or the whole network with federate=all), judged after every epoch on the
// pooled test splits, the external set and the probes. Is the base the limit (low here too) or the federation?
// Data: an experiment's generated data folder (<out>/data); base: a tfjs layers folder (<out>/pretrained-...).
// usage (after npm run build): node scripts/head-probe.mjs <dataDir> <pretrainedDir> <lr> <epochs> <dense(comma or none)> [federate=head|all] [lrDecay=1] [bnPasses=0] [optimizer=adam|momentum|sgd]
import { join } from 'node:path';
const D = new URL('../dist', import.meta.url).pathname;
const { loadTf } = await import(`${D}/training/backend.js`);
const { buildInitialBundle } = await import(`${D}/training/initial-model.js`);
const { decodeBundle, bundleTensors } = await import(`${D}/shared/bundle/tensor-bundle.js`);
const { modelMetaSchema } = await import(`${D}/shared/protocol/messages.js`);
const { loadDataset, loadImageSet } = await import(`${D}/training/image-folder.js`);
const { createImageDecoder } = await import(`${D}/training/images.js`);
const { pooledDataset, concatImageSets, evaluateModel } = await import(`${D}/experiment/sets.js`);
const { TfjsTrainer } = await import(`${D}/training/tfjs-trainer.js`);
const [dataDir, pre, lrS, epS, denseS, fed = 'head', decayS = '1', bnPassesS = '0', optimizer = 'adam'] = process.argv.slice(2);
const rt = await loadTf('auto');
const classes = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const dense = denseS === 'none' ? [] : denseS.split(',').map(Number);
const spec = {
  architecture: 'vgg19',
  width: 0.25,
  batchNorm: true,
  inputShape: [32, 32, 3],
  seed: 42,
  normalization: 'per-image',
  classes,
  initFrom: pre,
  head: { dense, dropout: dense.length ? 0.5 : 0 },
};
const d = decodeBundle(await buildInitialBundle(rt.tf, spec), modelMetaSchema);
let model = { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
const decoder = await createImageDecoder();
const sites = [];
for (const s of ['client1', 'client2', 'client3'])
  sites.push(await loadDataset({ dir: join(dataDir, s), classes, inputShape: [32, 32, 3], testFraction: 0.2, splitSeed: 42, decoder }));
const pooled = pooledDataset(sites);
const ext = (await loadImageSet({ dir: join(dataDir, 'external'), classes, inputShape: [32, 32, 3], decoder })).set;
const { readdirSync } = await import('node:fs');
const probes = [];
for (const p of readdirSync(join(dataDir, 'probes')))
  probes.push((await loadImageSet({ dir: join(dataDir, 'probes', p), classes, inputShape: [32, 32, 3], decoder })).set);
const sets = [
  { id: 'local', set: pooled.test },
  { id: 'external', set: ext },
  { id: 'probes', set: concatImageSets(probes) },
];
const names = fed === 'head' ? model.meta.headTensors : model.tensors.map((t) => t.name);
const trainer = new TfjsTrainer(rt, pooled, { shuffleSeed: 1 });
// bnPasses > 0: before the head trains, re-estimate the frozen base's BN statistics on the pooled
// training images (the experiment's `statistics` pass, as the federation would pool them).
if (Number(bnPassesS) > 0) {
  const { reestimateStatistics } = await import(`${D}/experiment/batch-norm-rounds.js`);
  const t0 = Date.now();
  model = (await reestimateStatistics(model, [{ id: 'pooled', trainer }], Number(bnPassesS))).model;
  console.log(`BN statistics re-estimated on the pooled training images, ${bnPassesS} passes, ${Date.now() - t0} ms`);
}
const trained = [];
const show = async (e) => {
  const m = await evaluateModel(rt.tf, model, sets);
  if (e > 0) trained.push([m.local.balancedAccuracy, m.external.balancedAccuracy, m.probes.recall[1]]);
  console.log(
    `epoch ${e}: local BA ${m.local.balancedAccuracy.toFixed(3)} external BA ${m.external.balancedAccuracy.toFixed(3)} probes recall(NOT_OKAY) ${m.probes.recall[1].toFixed(3)}`,
  );
};
await show(0);
for (let e = 1; e <= Number(epS); e++) {
  const r = await trainer.train(
    model,
    {
      epochs: 1,
      batchSize: 16,
      learningRate: Number(lrS) * Number(decayS) ** (e - 1),
      optimizer,
      classWeighting: 'auto',
      sampling: 'shuffle',
      federated: fed,
    },
    names,
  );
  const byName = new Map(r.tensors.map((t) => [t.name, t]));
  model = { ...model, version: e, tensors: model.tensors.map((t) => byName.get(t.name) ?? t) };
  await show(e);
}
// The tables' summary (docs/experiment.md): over the head's epochs 1..N, min-max (mean) of local and
// external balanced accuracy, and the mean probe defect recall.
const col = (i) => trained.map((r) => r[i]);
const range = (v) => `${Math.min(...v).toFixed(2)}-${Math.max(...v).toFixed(2)} (${(v.reduce((a, b) => a + b, 0) / v.length).toFixed(3)})`;
const mean = (v) => (v.reduce((a, b) => a + b, 0) / v.length).toFixed(3);
console.log(`epochs 1-${trained.length}: local BA ${range(col(0))}, external BA ${range(col(1))}, probe defect recall ${mean(col(2))}`);
