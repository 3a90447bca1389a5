// Diagnostic for docs/experiment.md ("The base's own held-out accuracy"): is a pretrained base's low
// accuracy on its own held-out reference images a batch-normalisation train/inference mismatch?
// Judges the base on its held-out 20 % (and on its un-augmented training 80 %) four ways:
//   inference: BN with the moving statistics the folder carries (what pretrain.json reports);
//   training-mode: BN with each batch's own statistics (batches of `batch` in a seeded shuffled
//          order, as training draws them; a batch of one class would skew its own statistics);
//   exact: moving statistics replaced by the exact population statistics of the un-augmented
//          training images (the statistics pass, one pass per BN layer: shared/fl/bn-statistics.ts).
// usage (after npm run build): node scripts/base-diagnose.mjs <baseDir> [batch=32] [seed=42] [quick]
//   quick: the moving-statistics rows only (seconds; no training-mode rows, no 3-minute statistics pass).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
const D = new URL('../dist', import.meta.url).pathname;
const { loadTf } = await import(`${D}/training/backend.js`);
const { buildInitialBundle } = await import(`${D}/training/initial-model.js`);
const { decodeBundle, bundleTensors } = await import(`${D}/shared/bundle/tensor-bundle.js`);
const { modelMetaSchema } = await import(`${D}/shared/protocol/messages.js`);
const { loadDataset } = await import(`${D}/training/image-folder.js`);
const { createImageDecoder } = await import(`${D}/training/images.js`);
const { TfjsTrainer, epochOrder } = await import(`${D}/training/tfjs-trainer.js`);
const { mulberry32 } = await import(`${D}/shared/util/random.js`);
const { readWeightsFromDir } = await import(`${D}/training/pretrained.js`);
const { modelFromWeights } = await import(`${D}/training/model-io.js`);
const { normalizeInPlace } = await import(`${D}/training/preprocess.js`);
const { reestimateStatistics } = await import(`${D}/experiment/batch-norm-rounds.js`);
const { batchNormLayers } = await import(`${D}/shared/fl/bn-statistics.js`);
const [base, batchS = '32', seedS = '42', mode = 'full'] = process.argv.slice(2);
const info = JSON.parse(readFileSync(join(base, 'pretrain.json'), 'utf8'));
const rt = await loadTf('auto');
// Older folders do not name their classes: four are the inspection classes, two OKAY and NOT_OKAY.
const classes = info.classes ?? (info.metrics.confusion.length === 4 ? ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'] : ['OKAY', 'NOT_OKAY']);
const spec = {
  architecture: info.architecture,
  width: info.width,
  batchNorm: info.batchNorm,
  inputShape: info.inputShape,
  seed: Number(seedS),
  normalization: info.normalization,
  classes,
  initFrom: base,
};
// The folder's own classifier too (the loader gives a federation a fresh seeded head instead):
// the head's shape from the file, its weights overwritten by the file's.
const file = await readWeightsFromDir(base);
const dense = [...file.keys()].filter((n) => /^head_dense\d+\/kernel$/.test(n)).map((n) => file.get(n).shape[1]);
spec.head = { dense, dropout: dense.length ? 0.5 : 0 };
const d = decodeBundle(await buildInitialBundle(rt.tf, spec), modelMetaSchema);
const model = {
  version: 0,
  sha256: '',
  meta: d.header.meta,
  tensors: bundleTensors(d).map((t) => (file.has(t.name) ? { ...t, data: file.get(t.name).data } : t)),
};
const data = await loadDataset({
  dir: info.data,
  classes,
  inputShape: info.inputShape,
  testFraction: 0.2,
  splitSeed: Number(seedS),
  decoder: await createImageDecoder(),
});
const trainer = new TfjsTrainer(rt, data, { shuffleSeed: 1 });

// Balanced accuracy and accuracy of predictions made with BN in training mode (batch statistics).
async function trainingMode(m, set, batch) {
  const tf = rt.tf;
  const lm = await modelFromWeights(tf, m.meta.topology, m.tensors);
  const [h, w, c] = set.shape;
  const per = h * w * c;
  const x = new Float32Array(batch * per);
  const order = epochOrder(set.labels, 'shuffle', mulberry32(7));
  const labels = new Int32Array(set.count);
  const pred = new Int32Array(set.count);
  for (let s = 0; s < set.count; s += batch) {
    const idx = Array.from(order.slice(s, s + batch));
    const n = idx.length;
    await set.read(idx, x);
    const b = x.subarray(0, n * per);
    normalizeInPlace(b, n, c, m.meta.normalization);
    pred.set(
      tf.tidy(() =>
        lm
          .apply(tf.tensor4d(b, [n, h, w, c]), { training: true })
          .argMax(-1)
          .dataSync(),
      ),
      s,
    );
    idx.forEach((k, i) => (labels[s + i] = set.labels[k]));
  }
  lm.dispose();
  return summarize(labels, pred);
}
function summarize(labels, pred) {
  const k = classes.length;
  const conf = Array.from({ length: k }, () => new Array(k).fill(0));
  for (let i = 0; i < labels.length; i++) conf[labels[i]][pred[i]]++;
  const rec = conf.map((r, i) => (r.reduce((a, b) => a + b, 0) ? r[i] / r.reduce((a, b) => a + b, 0) : 0));
  return { acc: conf.reduce((a, r, i) => a + r[i], 0) / labels.length, ba: rec.reduce((a, b) => a + b, 0) / k, conf };
}
async function inference(m, set) {
  const lm = await modelFromWeights(rt.tf, m.meta.topology, m.tensors);
  const { evaluateOnSet } = await import(`${D}/training/tfjs-trainer.js`);
  const r = await evaluateOnSet(rt.tf, lm, set, m.meta.normalization, classes.length);
  lm.dispose();
  return { acc: r.accuracy, ba: r.balancedAccuracy, loss: r.loss, conf: r.confusion };
}
const show = (label, r) =>
  console.log(
    `${label.padEnd(44)} acc ${r.acc.toFixed(3)} BA ${r.ba.toFixed(3)}${r.loss !== undefined ? ` loss ${r.loss.toFixed(3)}` : ''} confusion ${JSON.stringify(r.conf)}`,
  );
console.log(`base ${base}: ${data.train.count} training, ${data.test.count} held-out reference images (${info.data})`);
show('held-out, inference (moving statistics)', await inference(model, data.test));
show('train 80%, inference (moving statistics)', await inference(model, data.train));
if (mode === 'quick') process.exit(0);
show(`held-out, training mode (batches of ${batchS})`, await trainingMode(model, data.test, Number(batchS)));
show(`train 80%, training mode (batches of ${batchS})`, await trainingMode(model, data.train, Number(batchS)));
const passes = batchNormLayers(model.meta.topology).length;
const t0 = Date.now();
const exact = (await reestimateStatistics(model, [{ id: 'reference', trainer }], passes)).model;
console.log(`exact statistics of the un-augmented training images: ${passes} passes, ${Date.now() - t0} ms`);
show('held-out, inference (exact statistics)', await inference(exact, data.test));
show('train 80%, inference (exact statistics)', await inference(exact, data.train));
// How far the carried moving statistics were from the exact ones, per BN layer (relative, mean over channels).
const byName = new Map(exact.tensors.map((t) => [t.name, t.data]));
const rows = [];
for (const t of model.tensors) {
  if (!/moving_(mean|variance)$/.test(t.name)) continue;
  const e = byName.get(t.name);
  let s = 0;
  for (let i = 0; i < e.length; i++) s += Math.abs(t.data[i] - e[i]) / (Math.abs(e[i]) + 1e-3);
  rows.push(`${t.name.replace(/^.*?(batch_normalization[^/]*)\//, '$1/')} ${(s / e.length).toFixed(2)}`);
}
console.log('relative distance moving vs exact, per tensor (mean over channels):\n  ' + rows.join('\n  '));
