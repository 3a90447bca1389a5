// Diagnostic for docs/experiment.md ("Why the base never learnt the reference defects"): a base's
// recall of NOT_OKAY and of OKAY on reference images, by reference defect (crack, dirt, no-tongue:
// the images named `ref-<colour>-<shape>-<defect>-<CLASS>-<n>.png` by synthetic-data/generate.ts).
// Give it reference images the base never trained on, e.g. another seed's:
//   node dist/cli/main.js dataset synth --out REF43 --seed 43 --size 32 --parts reference
// usage (after npm run build): node scripts/reference-defects.mjs <baseDir> <referenceDir>
import { mkdtempSync, readdirSync, rmSync, symlinkSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createImageDecoder, evaluateOnSet, loadImageSet, loadPretrainedBase } from './lib/pretrained-base.mjs';
const [baseArg, refArg] = process.argv.slice(2);
if (!baseArg || !refArg) {
  console.error('usage: node scripts/reference-defects.mjs <baseDir> <referenceDir>');
  process.exit(2);
}
const ref = resolve(refArg);
const { tf, model, info, classes } = await loadPretrainedBase(baseArg);
const decoder = await createImageDecoder();
const tmp = mkdtempSync(join(tmpdir(), 'reference-defects-'));
try {
  for (const defect of ['crack', 'dirt', 'no-tongue']) {
    // One folder per defect: its products' NOT_OKAY images and the OKAY images generated with them.
    for (const cls of ['OKAY', 'NOT_OKAY']) {
      mkdirSync(join(tmp, defect, cls), { recursive: true });
      for (const f of readdirSync(join(ref, cls)).filter((n) => n.includes(`-${defect}-${cls}-`))) symlinkSync(join(ref, cls, f), join(tmp, defect, cls, f));
    }
    const { set } = await loadImageSet({ dir: join(tmp, defect), classes, inputShape: info.inputShape, decoder });
    const r = await evaluateOnSet(tf, model, set, info.normalization, classes.length);
    const n = (c) => r.confusion[c].reduce((a, b) => a + b, 0);
    console.log(
      `${defect.padEnd(9)} NOT_OKAY called NOT_OKAY ${r.confusion[1][1]} / ${n(1)} (${r.recall[1].toFixed(2)}), OKAY called OKAY ${r.confusion[0][0]} / ${n(0)} (${r.recall[0].toFixed(2)})`,
    );
  }
} finally {
  model.dispose();
  rmSync(tmp, { recursive: true, force: true });
}
