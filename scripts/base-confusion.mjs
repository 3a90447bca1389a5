// Diagnostic for docs/experiment.md ("Reference products with varied contact tongues"): a pretrained
// base's own classifier on a folder of images `<dir>/<CLASS>/*.png`, e.g. the external set
// (`<data>/external`: OKAY and HIDDEN of a product none of the references shows): per true class,
// how many images were called each class. Did the base learn "an intact port looks like mine"?
// usage (after npm run build): node scripts/base-confusion.mjs <baseDir> <imageDir>
import { resolve } from 'node:path';
import { createImageDecoder, evaluateOnSet, loadImageSet, loadPretrainedBase } from './lib/pretrained-base.mjs';
const [baseArg, dirArg] = process.argv.slice(2);
if (!baseArg || !dirArg) {
  console.error('usage: node scripts/base-confusion.mjs <baseDir> <imageDir>');
  process.exit(2);
}
const { tf, model, info, classes } = await loadPretrainedBase(baseArg);
try {
  const { set } = await loadImageSet({ dir: resolve(dirArg), classes, inputShape: info.inputShape, decoder: await createImageDecoder() });
  const r = await evaluateOnSet(tf, model, set, info.normalization, classes.length);
  for (let t = 0; t < classes.length; t++) {
    const n = r.confusion[t].reduce((a, b) => a + b, 0);
    if (n === 0) continue;
    console.log(`${classes[t].padEnd(8)} (${n}) called: ${classes.map((c, p) => `${c} ${r.confusion[t][p]}`).join(', ')}`);
  }
} finally {
  model.dispose();
}
