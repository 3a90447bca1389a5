import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { listImageFiles, loadDataset, readAll, splitFiles } from '../training/image-folder.js';
import { normalizeInPlace } from '../training/preprocess.js';
import { generateDataset, PAPER_CLIENTS } from '../synthetic-data/generate.js';
import { sha256Hex } from '../shared/bundle/tensor-bundle.js';
import { tempDir } from './helpers.js';

const classes = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];

test('the generator is deterministic for a seed and writes the agent folder layout', async () => {
  const a = tempDir('synth-a');
  const b = tempDir('synth-b');
  try {
    const clients = PAPER_CLIENTS.map((c) => ({ ...c, counts: { OKAY: 3, NOT_OKAY: 2, HIDDEN: 2, EMPTY: 2 } }));
    await generateDataset({ out: a.path, seed: 5, size: 24, clients });
    await generateDataset({ out: b.path, seed: 5, size: 24, clients });
    for (const c of clients)
      for (const cls of classes) {
        const files = readdirSync(join(a.path, c.name, cls)).sort();
        assert.equal(files.length, c.counts[cls as 'OKAY']);
        for (const f of files) assert.equal(sha256Hex(readFileSync(join(a.path, c.name, cls, f))), sha256Hex(readFileSync(join(b.path, c.name, cls, f))), f);
      }
  } finally {
    a.cleanup();
    b.cleanup();
  }
});

test('the train/test split is stratified, seeded and identical on every run', () => {
  const files = Array.from({ length: 40 }, (_, i) => ({ path: `/d/${i % 4}/${i}.png`, label: i % 4 }));
  const s1 = splitFiles(files, 4, 0.25, 9);
  const s2 = splitFiles([...files].reverse(), 4, 0.25, 9);
  assert.deepEqual(s1, s2, 'independent of listing order');
  assert.equal(s1.test.length, 12);
  for (let c = 0; c < 4; c++) assert.equal(s1.test.filter((f) => f.label === c).length, 3);
  assert.notDeepEqual(splitFiles(files, 4, 0.25, 10).test, s1.test, 'another seed, another split');
});

test('folders that are not classes, stray files and unreadable images are reported with their paths; class indices follow the federation list', async () => {
  const dir = tempDir('dataset');
  try {
    await generateDataset({
      out: dir.path,
      seed: 1,
      size: 16,
      clients: [{ ...PAPER_CLIENTS[0]!, name: 'site', counts: { OKAY: 4, NOT_OKAY: 3, HIDDEN: 0, EMPTY: 2 } }],
    });
    const root = join(dir.path, 'site');
    mkdirSync(join(root, 'SCRATCHED'));
    writeFileSync(join(root, 'SCRATCHED', 'x.png'), 'not a png');
    writeFileSync(join(root, 'OKAY', 'broken.png'), 'not a png either');
    writeFileSync(join(root, 'OKAY', 'notes.txt'), 'hello');
    writeFileSync(join(root, 'README'), 'stray');
    const listed = await listImageFiles(root, ['EMPTY', 'HIDDEN', 'NOT_OKAY', 'OKAY']);
    assert.ok(listed.files.every((f) => (f.path.includes('/OKAY/') ? f.label === 3 : true)));
    const data = await loadDataset({ dir: root, classes, inputShape: [16, 16, 3], testFraction: 0.25, splitSeed: 1 });
    const text = data.problems.join('\n');
    assert.match(text, /SCRATCHED: folder "SCRATCHED" is not one of the federation's classes/);
    assert.match(text, /OKAY\/broken\.png: unreadable image/);
    assert.match(text, /notes\.txt: not a \.png/);
    assert.match(text, /README: a file at the top level/);
    assert.deepEqual(
      data.counts.train.map((n, i) => n + data.counts.test[i]!),
      [4, 3, 0, 2],
      'the absent class keeps its index with zero images',
    );
    assert.equal(data.train.count + data.test.count, 9);
    assert.ok((await readAll(data.train)).every((v) => v >= 0 && v <= 1));
  } finally {
    dir.cleanup();
  }
});

test('per-image normalisation gives each image mean 0 and std 1; flat images do not divide by zero', () => {
  const x = new Float32Array(128);
  for (let i = 0; i < 64; i++) x[i] = (i % 7) / 7;
  x.fill(0.2, 64);
  normalizeInPlace(x, 2, 1, 'per-image');
  const first = [...x.subarray(0, 64)];
  const mean = first.reduce((s, v) => s + v, 0) / 64;
  const std = Math.sqrt(first.reduce((s, v) => s + (v - mean) ** 2, 0) / 64);
  assert.ok(Math.abs(mean) < 1e-6 && Math.abs(std - 1) < 1e-5, `mean ${mean} std ${std}`);
  assert.ok(x.subarray(64).every((v) => v === 0));
});

test('odd images (another size, gray, RGBA with alpha, 16-bit, JPEG) are used and reported with their paths; both decoders agree', async () => {
  const { PNG } = await import('pngjs');
  const jpeg = (await import('jpeg-js')).default;
  const { jsDecoder, sharpDecoder } = await import('../training/images.js');
  const dir = tempDir('odd-images');
  try {
    const rgba = (w: number, h: number, seed: number) => Uint8Array.from({ length: w * h * 4 }, (_, i) => (i % 4 === 3 ? 255 : (i * 37 + seed * 11) % 256));
    const png = (w: number, h: number, seed: number, opts: { colorType?: 0 | 2 | 4 | 6; bitDepth?: 8 | 16 } = {}) => {
      const p = new PNG({ width: w, height: h });
      p.data = Buffer.from(rgba(w, h, seed));
      return PNG.sync.write(p, { colorType: opts.colorType ?? 6, bitDepth: opts.bitDepth ?? 8 });
    };
    for (const cls of ['OKAY', 'EMPTY']) mkdirSync(join(dir.path, cls));
    for (let i = 0; i < 6; i++) writeFileSync(join(dir.path, 'OKAY', `ok-${i}.png`), png(20, 20, i, { colorType: 2 }));
    writeFileSync(join(dir.path, 'OKAY', 'big.png'), png(40, 30, 7, { colorType: 2 }));
    writeFileSync(join(dir.path, 'OKAY', 'gray.png'), png(20, 20, 8, { colorType: 0 }));
    writeFileSync(join(dir.path, 'EMPTY', 'alpha.png'), png(20, 20, 9, { colorType: 6 }));
    writeFileSync(join(dir.path, 'EMPTY', 'deep.png'), png(20, 20, 10, { colorType: 2, bitDepth: 16 }));
    writeFileSync(join(dir.path, 'EMPTY', 'photo.jpg'), jpeg.encode({ data: rgba(20, 20, 11), width: 20, height: 20 }, 90).data);
    writeFileSync(join(dir.path, 'EMPTY', 'e.png'), png(20, 20, 12, { colorType: 2 }));
    const data = await loadDataset({ dir: dir.path, classes, inputShape: [16, 16, 3], testFraction: 0.2, splitSeed: 1, decoder: jsDecoder });
    assert.equal(data.train.count + data.test.count, 12, 'every image is used');
    const text = data.problems.join('\n');
    assert.match(text, /OKAY\/big\.png: odd image \(size 40x30 while most images are 20x20\): used, resized to 16x16 RGB/);
    assert.match(text, /OKAY\/gray\.png: odd image \(gray while most images are RGB\)/);
    assert.match(text, /EMPTY\/alpha\.png: odd image \(RGBA while most images are RGB, alpha ignored\)/);
    assert.match(text, /EMPTY\/deep\.png: odd image \(RGB 16-bit while most images are RGB\)/);
    assert.doesNotMatch(text, /photo\.jpg/, 'an 8-bit RGB JPEG of the common size is not odd');
    assert.doesNotMatch(text, /ok-\d\.png/);

    const sharp = await sharpDecoder();
    if (sharp) {
      for (const name of ['OKAY/big.png', 'OKAY/gray.png', 'EMPTY/photo.jpg', 'EMPTY/deep.png']) {
        const bytes = readFileSync(join(dir.path, name));
        const a = await jsDecoder.decode(bytes, name, 16, 16, 3);
        const b = await sharp.decode(bytes, name, 16, 16, 3);
        assert.deepEqual(a.source, b.source, `${name}: same source description`);
        let diff = 0;
        for (let i = 0; i < a.pixels.length; i++) diff += Math.abs(a.pixels[i]! - b.pixels[i]!);
        // Both resample with a bilinear filter widened for downscaling; libvips rounds and blurs a little differently.
        assert.ok(diff / a.pixels.length < 12, `${name}: mean difference ${diff / a.pixels.length} of 255`);
      }
    }
  } finally {
    dir.cleanup();
  }
});

test('caffe normalisation: BGR, 0..255 minus the ImageNet mean (Keras VGG weights); imagenet: (x - mean) / std', () => {
  const x = Float32Array.from([1, 0.5, 0]);
  normalizeInPlace(x, 1, 3, 'caffe');
  assert.deepEqual(
    [...x].map((v) => Math.round(v * 1000) / 1000),
    [0 - 103.939, 127.5 - 116.779, 255 - 123.68].map((v) => Math.round(v * 1000) / 1000),
  );
  const y = Float32Array.from([0.485, 0.456, 0.406 + 0.225]);
  normalizeInPlace(y, 1, 3, 'imagenet');
  assert.ok(Math.abs(y[0]!) < 1e-6 && Math.abs(y[1]!) < 1e-6 && Math.abs(y[2]! - 1) < 1e-5);
});
