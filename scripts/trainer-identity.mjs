// Trains one tiny model with the compiled trainer of a checkout (its dist/) and prints a SHA-256 of the weights, per sampling.
// usage: node scripts/trainer-identity.mjs ROOT   e.g. compare /work/main and this checkout: identical hashes = identical training.
import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
const root = (await import('node:path')).resolve(process.argv[2] ?? '.');
const { loadTf } = await import(`${root}/dist/training/backend.js`);
const { loadDataset } = await import(`${root}/dist/training/image-folder.js`);
const { jsDecoder } = await import(`${root}/dist/training/images.js`);
const { TfjsTrainer } = await import(`${root}/dist/training/tfjs-trainer.js`);
const { buildInitialBundle } = await import(`${root}/dist/training/initial-model.js`);
const { bundleTensors, decodeBundle } = await import(`${root}/dist/shared/bundle/tensor-bundle.js`);
const { generateDataset } = await import(`${root}/dist/synthetic-data/generate.js`);
const { PAPER_CLIENTS } = await import(`${root}/dist/synthetic-data/generate.js`);
const runtime = await loadTf('auto');
const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const dir = (await import('node:fs')).mkdtempSync('/tmp/trainer-identity-');
await generateDataset({
  out: dir,
  seed: 7,
  size: 16,
  clients: [{ ...PAPER_CLIENTS[0], name: 'site', counts: { OKAY: 12, NOT_OKAY: 5, HIDDEN: 6, EMPTY: 6 } }],
});
const data = await loadDataset({
  dir: `${dir}/site`,
  classes: CLASSES,
  inputShape: [16, 16, 3],
  testFraction: 0.25,
  splitSeed: 1,
  cacheBytes: 1 << 26,
  decoder: jsDecoder,
});
const d = decodeBundle(
  await buildInitialBundle(runtime.tf, { architecture: 'small-cnn', width: 1, inputShape: [16, 16, 3], classes: CLASSES, seed: 3, normalization: 'per-image' }),
);
const model = { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
for (const sampling of ['shuffle', 'balanced']) {
  const task = { epochs: 2, batchSize: 4, learningRate: 0.003, optimizer: 'adam', classWeighting: 'auto', sampling, federated: 'all' };
  const r = await new TfjsTrainer(runtime, data, { shuffleSeed: 5 }).train(
    model,
    task,
    model.tensors.map((t) => t.name),
  );
  const h = createHash('sha256');
  for (const t of r.tensors) h.update(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  console.log(sampling, runtime.backend, h.digest('hex'));
}
(await import('node:fs')).rmSync(dir, { recursive: true, force: true });
