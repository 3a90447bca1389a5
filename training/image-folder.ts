import { readdir, readFile, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { deriveSeed, mulberry32, shuffleInPlace } from '../shared/util/random.js';
import { createImageDecoder, type ImageDecoder, type SourceInfo } from './images.js';

/**
 * A site's local images: `<dir>/<CLASS>/*.{png,jpg,jpeg}`. The class list is the federation's,
 * so a label has the same index on every agent even when a site has no image of it. Anything
 * that does not fit (a folder that is not a class, an unreadable file, an image whose size or
 * channels differ from the rest) is reported with its path.
 *
 * Images are decoded once at start (to find the bad ones) and kept, resized, as 8-bit pixels in a
 * cache of `cacheBytes`; what does not fit is decoded again from disk whenever a batch needs it,
 * so a site with more images than memory still trains (streaming, batch by batch).
 */

export const IMAGE_EXTENSIONS = new Set(['.png', '.jpg', '.jpeg']);

/** Default decoded-image cache: 1 GiB (about 87,000 images at 64x64x3, 6,800 at 224x224x3). */
export const DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024;

export interface ImageFile {
  path: string;
  label: number;
}

/** A split of the local images that hands out batches; pixels in [0, 1], not yet normalised. */
export interface ImageSet {
  readonly count: number;
  /** Class index per image. */
  readonly labels: Int32Array;
  readonly shape: readonly [number, number, number];
  readonly paths: readonly string[];
  /** Images `indices` into `out` (N x H x W x C float32, values in [0, 1]). */
  read(indices: ArrayLike<number>, out: Float32Array): Promise<void>;
  /** Images kept decoded in memory (the rest streams from disk). */
  readonly cached: number;
}

export interface LocalDataset {
  classes: readonly string[];
  train: ImageSet;
  test: ImageSet;
  /** Images per class in train and test. */
  counts: { train: number[]; test: number[] };
  /** Skipped files and odd images, with paths and what was done about them. */
  problems: string[];
  /** The decoder used (sharp or js). */
  decoder: string;
}

export interface DatasetOptions {
  dir: string;
  classes: readonly string[];
  inputShape: readonly [number, number, number];
  testFraction: number;
  splitSeed: number;
  /** Memory for decoded images, bytes. Default DEFAULT_CACHE_BYTES; 0 streams every batch from disk. */
  cacheBytes?: number;
  decoder?: ImageDecoder;
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

/** Shared by both splits: the decoded-image budget and the decoder. */
class ImageCache {
  private used = 0;
  constructor(
    readonly budget: number,
    readonly decoder: ImageDecoder,
  ) {}
  take(bytes: number): boolean {
    if (this.used + bytes > this.budget) return false;
    this.used += bytes;
    return true;
  }
}

class FolderImageSet implements ImageSet {
  readonly count: number;
  readonly labels: Int32Array;
  readonly paths: string[];
  private readonly pixels: (Uint8Array | null)[];

  constructor(
    files: readonly ImageFile[],
    readonly shape: readonly [number, number, number],
    private readonly cache: ImageCache,
    decoded: (Uint8Array | null)[],
  ) {
    this.count = files.length;
    this.labels = Int32Array.from(files, (f) => f.label);
    this.paths = files.map((f) => f.path);
    this.pixels = decoded;
  }

  get cached(): number {
    return this.pixels.filter((p) => p !== null).length;
  }

  async read(indices: ArrayLike<number>, out: Float32Array): Promise<void> {
    const [h, w, c] = this.shape;
    const per = h * w * c;
    for (let k = 0; k < indices.length; k++) {
      const i = indices[k]!;
      let px = this.pixels[i];
      if (!px) {
        // Not cached: decode it again (it decoded at start; a failure now means the file changed).
        const path = this.paths[i]!;
        try {
          px = (await this.cache.decoder.decode(await readFile(path), path, w, h, c as 1 | 3)).pixels;
        } catch (err) {
          throw new FedlineError(ErrorCodes.DATA, `${path}: cannot be read any more (${(err as Error).message}); it was readable when the agent started`);
        }
      }
      const o = k * per;
      for (let j = 0; j < per; j++) out[o + j] = px[j]! / 255;
    }
  }
}

interface Decoded {
  file: ImageFile;
  pixels: Uint8Array;
  source: SourceInfo;
}

const kindText = (s: SourceInfo) =>
  `${s.channels === 1 ? 'gray' : s.channels === 2 ? 'gray+alpha' : s.channels === 4 ? (s.format === 'jpeg' ? 'CMYK' : 'RGBA') : 'RGB'}${s.bitDepth !== 8 ? ` ${s.bitDepth}-bit` : ''}`;

/**
 * Images that differ from most of the site's images (size, channels, bit depth) are named, with
 * what was done (resized / converted); a site-wide note when the common size is stretched to the
 * model's aspect ratio. Such images are used, not dropped.
 */
function oddImageReports(decoded: readonly Decoded[], shape: readonly [number, number, number]): string[] {
  if (decoded.length === 0) return [];
  const mostCommon = (key: (d: Decoded) => string) => {
    const counts = new Map<string, number>();
    for (const d of decoded) counts.set(key(d), (counts.get(key(d)) ?? 0) + 1);
    return [...counts.entries()].sort((a, b) => b[1] - a[1])[0]![0];
  };
  const sizeKey = (d: Decoded) => `${d.source.width}x${d.source.height}`;
  const kindKey = (d: Decoded) => kindText(d.source);
  const commonSize = mostCommon(sizeKey);
  const commonKind = kindText(decoded.find((d) => kindKey(d) === mostCommon(kindKey))!.source);
  const [h, w, c] = shape;
  const out: string[] = [];
  const [cw, ch] = commonSize.split('x').map(Number) as [number, number];
  if (Math.abs(Math.log(cw / ch / (w / h))) > Math.log(1.25)) {
    out.push(`most images are ${commonSize} (aspect ${(cw / ch).toFixed(2)}); they are stretched to the model input ${w}x${h} (aspect ${(w / h).toFixed(2)})`);
  }
  const target = c === 1 ? 'gray' : 'RGB';
  for (const d of decoded) {
    const notes: string[] = [];
    if (sizeKey(d) !== commonSize) notes.push(`size ${sizeKey(d)} while most images are ${commonSize}`);
    if (kindText(d.source) !== commonKind) {
      const drop = d.source.channels === 2 || (d.source.channels === 4 && d.source.format === 'png') ? ', alpha ignored' : '';
      notes.push(`${kindText(d.source)} while most images are ${commonKind}${drop}`);
    }
    if (notes.length) out.push(`${d.file.path}: odd image (${notes.join('; ')}): used, resized to ${w}x${h} ${target}`);
  }
  return out;
}

async function decodeAll(
  files: readonly ImageFile[],
  shape: readonly [number, number, number],
  cache: ImageCache,
  problems: string[],
  all: Decoded[],
): Promise<{ kept: ImageFile[]; pixels: (Uint8Array | null)[] }> {
  const [h, w, c] = shape;
  const kept: ImageFile[] = [];
  const pixels: (Uint8Array | null)[] = [];
  // A few in flight: sharp decodes on libuv's thread pool; the pure-JS decoder runs one at a time anyway.
  const inFlight = cache.decoder.name === 'sharp' ? 8 : 1;
  const results = new Array<Decoded | null>(files.length).fill(null);
  let next = 0;
  const lane = async () => {
    while (next < files.length) {
      const i = next++;
      const f = files[i]!;
      try {
        const d = await cache.decoder.decode(await readFile(f.path), f.path, w, h, c as 1 | 3);
        results[i] = { file: f, pixels: d.pixels, source: d.source };
      } catch (err) {
        const msg = (err as Error).message;
        problems.push(`${f.path}: unreadable image, skipped (${msg.startsWith(f.path) ? msg.slice(f.path.length + 2) : msg})`);
      }
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  for (const d of results) {
    if (!d) continue;
    kept.push(d.file);
    all.push({ ...d, pixels: new Uint8Array(0) });
    pixels.push(cache.take(d.pixels.byteLength) ? d.pixels : null);
  }
  return { kept, pixels };
}

export async function loadDataset(options: DatasetOptions): Promise<LocalDataset> {
  const { files, problems } = await listImageFiles(options.dir, options.classes);
  if (files.length === 0)
    throw new FedlineError(ErrorCodes.DATA, `no images found under ${options.dir} (expected <dir>/<CLASS>/*.png with classes ${options.classes.join(', ')})`);
  const split = splitFiles(files, options.classes.length, options.testFraction, options.splitSeed);
  const cache = new ImageCache(options.cacheBytes ?? DEFAULT_CACHE_BYTES, options.decoder ?? (await createImageDecoder()));
  const all: Decoded[] = [];
  const train = await decodeAll(split.train, options.inputShape, cache, problems, all);
  const test = await decodeAll(split.test, options.inputShape, cache, problems, all);
  problems.push(...oddImageReports(all, options.inputShape));
  const trainSet = new FolderImageSet(train.kept, options.inputShape, cache, train.pixels);
  const testSet = new FolderImageSet(test.kept, options.inputShape, cache, test.pixels);
  const count = (set: ImageSet) => options.classes.map((_, i) => set.labels.filter((v) => v === i).length);
  return {
    classes: options.classes,
    train: trainSet,
    test: testSet,
    counts: { train: count(trainSet), test: count(testSet) },
    problems,
    decoder: cache.decoder.name,
  };
}

/**
 * Every image of a folder as one set, no split: an evaluation set such as the experiment's
 * external set or its cross-client probes. Same listing, decoding and problem reports as loadDataset.
 */
export async function loadImageSet(options: Omit<DatasetOptions, 'testFraction' | 'splitSeed'>): Promise<{ set: ImageSet; problems: string[] }> {
  const { files, problems } = await listImageFiles(options.dir, options.classes);
  if (files.length === 0)
    throw new FedlineError(ErrorCodes.DATA, `no images found under ${options.dir} (expected <dir>/<CLASS>/*.png with classes ${options.classes.join(', ')})`);
  const cache = new ImageCache(options.cacheBytes ?? DEFAULT_CACHE_BYTES, options.decoder ?? (await createImageDecoder()));
  const all: Decoded[] = [];
  const decoded = await decodeAll(files, options.inputShape, cache, problems, all);
  problems.push(...oddImageReports(all, options.inputShape));
  return { set: new FolderImageSet(decoded.kept, options.inputShape, cache, decoded.pixels), problems };
}

/** A whole split in memory as one array (tests, small tools): N x H x W x C in [0, 1]. */
export async function readAll(set: ImageSet): Promise<Float32Array> {
  const [h, w, c] = set.shape;
  const out = new Float32Array(set.count * h * w * c);
  await set.read(
    Array.from({ length: set.count }, (_, i) => i),
    out,
  );
  return out;
}
