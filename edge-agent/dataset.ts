import { readdir, readFile, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { ErrorCodes, FedlineError } from '../shared/errors.js';
import { deriveSeed, mulberry32, shuffleInPlace } from '../shared/random.js';
import { decodeImage, resizeInto } from './images.js';
import { normalizeInPlace, type Normalization } from './preprocess.js';

/**
 * A site's local images: `<dir>/<CLASS>/*.{png,jpg,jpeg}`. The class list is the federation's,
 * so a label has the same index on every agent even when a site has no image of it. Anything
 * that does not fit (a folder that is not a class, an unreadable file) is reported with its path.
 */

export const IMAGE_EXTENSIONS = new Set(['.png', '.jpg', '.jpeg']);

export interface ImageFile {
  path: string;
  label: number;
}

export interface LabeledImages {
  /** N x H x W x C, values in [0, 1]. */
  x: Float32Array;
  /** Class index per image. */
  y: Int32Array;
  count: number;
  shape: readonly [number, number, number];
}

export interface LocalDataset {
  classes: readonly string[];
  train: LabeledImages;
  test: LabeledImages;
  /** Images per class in train and test. */
  counts: { train: number[]; test: number[] };
  /** What was skipped and why, with paths. */
  problems: string[];
}

export interface DatasetOptions {
  dir: string;
  classes: readonly string[];
  inputShape: readonly [number, number, number];
  testFraction: number;
  splitSeed: number;
  normalization: Normalization;
}

export async function listImageFiles(dir: string, classes: readonly string[]): Promise<{ files: ImageFile[]; problems: string[] }> {
  const problems: string[] = [];
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (err) {
    throw new FedlineError(ErrorCodes.DATA, `cannot read the image folder ${dir}: ${(err as Error).message}`);
  }
  const files: ImageFile[] = [];
  for (const entry of entries.sort()) {
    const full = join(dir, entry);
    const isDir = (await stat(full)).isDirectory();
    if (!isDir) {
      problems.push(`${full}: a file at the top level; images belong in a class folder (${classes.join(', ')})`);
      continue;
    }
    const label = classes.indexOf(entry);
    if (label < 0) {
      problems.push(`${full}: folder "${entry}" is not one of the federation's classes (${classes.join(', ')}); its images are not used`);
      continue;
    }
    for (const name of (await readdir(full)).sort()) {
      const path = join(full, name);
      if (!IMAGE_EXTENSIONS.has(extname(name).toLowerCase())) {
        problems.push(`${path}: not a .png/.jpg/.jpeg file`);
        continue;
      }
      files.push({ path, label });
    }
  }
  return { files, problems };
}

/**
 * Seeded, stratified split: per class, files sorted by path, shuffled with a seed derived from
 * the split seed and the class name, and the first ceil(n * testFraction) go to test (one at
 * least when a class has two images or more). Same files + same seed = same split, every run.
 */
export function splitFiles(files: readonly ImageFile[], numClasses: number, testFraction: number, seed: number): { train: ImageFile[]; test: ImageFile[] } {
  const train: ImageFile[] = [];
  const test: ImageFile[] = [];
  for (let c = 0; c < numClasses; c++) {
    const ofClass = files.filter((f) => f.label === c).sort((a, b) => (a.path < b.path ? -1 : 1));
    shuffleInPlace(ofClass, mulberry32(deriveSeed(seed, `split:${c}`)));
    const nTest = ofClass.length >= 2 ? Math.max(1, Math.ceil(ofClass.length * testFraction)) : 0;
    test.push(...ofClass.slice(0, nTest));
    train.push(...ofClass.slice(nTest));
  }
  return { train, test };
}

async function decodeAll(files: readonly ImageFile[], shape: readonly [number, number, number], problems: string[]): Promise<LabeledImages> {
  const [h, w, c] = shape;
  const per = h * w * c;
  const x = new Float32Array(files.length * per);
  const y = new Int32Array(files.length);
  let n = 0;
  for (const f of files) {
    try {
      const img = decodeImage(await readFile(f.path), f.path);
      if (img.width < 1 || img.height < 1) throw new Error(`${f.path}: empty image`);
      resizeInto(img, w, h, c as 1 | 3, x, n * per);
      y[n] = f.label;
      n++;
    } catch (err) {
      problems.push(`${f.path}: unreadable image (${(err as Error).message})`);
    }
  }
  return { x: n === files.length ? x : x.slice(0, n * per), y: n === files.length ? y : y.slice(0, n), count: n, shape };
}

export async function loadDataset(options: DatasetOptions): Promise<LocalDataset> {
  const { files, problems } = await listImageFiles(options.dir, options.classes);
  if (files.length === 0) throw new FedlineError(ErrorCodes.DATA, `no images found under ${options.dir} (expected <dir>/<CLASS>/*.png with classes ${options.classes.join(', ')})`);
  const split = splitFiles(files, options.classes.length, options.testFraction, options.splitSeed);
  const train = await decodeAll(split.train, options.inputShape, problems);
  const test = await decodeAll(split.test, options.inputShape, problems);
  normalizeInPlace(train.x, train.count, options.inputShape[2], options.normalization);
  normalizeInPlace(test.x, test.count, options.inputShape[2], options.normalization);
  const count = (set: LabeledImages) => options.classes.map((_, i) => set.y.filter((v) => v === i).length);
  return { classes: options.classes, train, test, counts: { train: count(train), test: count(test) }, problems };
}
