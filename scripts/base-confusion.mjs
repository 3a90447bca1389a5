// Diagnostic for docs/experiment.md ("Reference products with varied contact tongues"): a pretrained
// base's own classifier on a folder of images `<dir>/<CLASS>/*.png`, e.g. the external set
// (`<data>/external`: OKAY and HIDDEN of a product none of the references shows): per true class,
// how many images were called each class. Did the base learn "an intact port looks like mine"?
// usage (after npm run build): node scripts/base-confusion.mjs <baseDir> <imageDir>
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
const D = new URL('../dist', import.meta.url).pathname;
const { loadTf } = await import(`${D}/training/backend.js`);
const { loadLayersModelFromDir } = await import(`${D}/training/model-io.js`);
const { loadImageSet } = await import(`${D}/training/image-folder.js`);
const { createImageDecoder } = await import(`${D}/training/images.js`);
const { evaluateOnSet } = await import(`${D}/training/tfjs-trainer.js`);
const [baseArg, dirArg] = process.argv.slice(2);
if (!baseArg || !dirArg) {
  console.error('usage: node scripts/base-confusion.mjs <baseDir> <imageDir>');
  process.exit(2);
}
const base = resolve(baseArg);
const info = JSON.parse(readFileSync(join(base, 'pretrain.json'), 'utf8'));
const classes = info.classes ?? ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
const rt = await loadTf('auto');
const model = await loadLayersModelFromDir(rt.tf, base);
try {
  const { set } = await loadImageSet({ dir: resolve(dirArg), classes, inputShape: info.inputShape, decoder: await createImageDecoder() });
  const r = await evaluateOnSet(rt.tf, model, set, info.normalization, classes.length);
  for (let t = 0; t < classes.length; t++) {
    const n = r.confusion[t].reduce((a, b) => a + b, 0);
    if (n === 0) continue;
    console.log(`${classes[t].padEnd(8)} (${n}) called: ${classes.map((c, p) => `${c} ${r.confusion[t][p]}`).join(', ')}`);
  }
} finally {
  model.dispose();
}
