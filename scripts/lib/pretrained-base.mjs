// A pretrained base folder (fedline pretrain's output: model.json, weights.bin, pretrain.json) loaded
// for the diagnostic scripts (scripts/base-confusion.mjs, scripts/reference-defects.mjs), with the
// built modules they evaluate it with. Run `npm run build` first.
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
const D = new URL('../../dist', import.meta.url).pathname;
const { loadTf } = await import(`${D}/training/backend.js`);
const { loadLayersModelFromDir } = await import(`${D}/training/model-io.js`);
export const { loadImageSet } = await import(`${D}/training/image-folder.js`);
export const { createImageDecoder } = await import(`${D}/training/images.js`);
export const { evaluateOnSet } = await import(`${D}/training/tfjs-trainer.js`);

/** The base's model, its pretrain.json (`info`) and its classes; dispose `model` when done. */
export async function loadPretrainedBase(dir) {
  const base = resolve(dir);
  const info = JSON.parse(readFileSync(join(base, 'pretrain.json'), 'utf8'));
  // Older folders do not name their classes: four are the inspection classes, two OKAY and NOT_OKAY.
  const classes = info.classes ?? (info.metrics.confusion.length === 4 ? ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'] : ['OKAY', 'NOT_OKAY']);
  const rt = await loadTf('auto');
  const model = await loadLayersModelFromDir(rt.tf, base);
  return { tf: rt.tf, model, info, classes };
}
