import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROTATION_CLASSES, rotateQuarterTurns, rotationImageSet } from '../training/rotation-set.js';
import type { ImageSet, LocalDataset } from '../training/image-folder.js';
import { loadTf } from '../training/backend.js';
import { selfSupervisedBase } from '../experiment/self-supervised.js';
import { readWeightsFromDir } from '../training/pretrained.js';
import { experimentConfigSchema } from '../experiment/config.js';
import { runExperiment } from '../experiment/runner.js';
import { type ModelSpec } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { tempDir } from './helpers.js';

/**
 * The self-supervised site pass (pretrained.selfSupervised): the rotation pretext turns images
 * correctly, never reads a class label, reads no image of another site, is deterministic with a
 * seed, and its result is the common start of the experiment's pretrained arms.
 */

const SIDE = 4;
const C = 3;
const PER = SIDE * SIDE * C;

/** An image set of `count` distinct images whose labels cannot be read (they throw), recording which images are read. */
function labelFreeSet(count: number, offset: number, reads: number[]): ImageSet {
  const images = Array.from({ length: count }, (_, i) => Float32Array.from({ length: PER }, (_, k) => (((offset + i) * 31 + k * 7) % 97) / 97));
  return {
    count,
    shape: [SIDE, SIDE, C],
    paths: images.map((_, i) => `img-${offset + i}.png`),
    cached: count,
    get labels(): Int32Array {
      throw new Error('the pretext read a class label');
    },
    async read(indices, out) {
      for (let j = 0; j < indices.length; j++) {
        reads.push(offset + indices[j]!);
        out.set(images[indices[j]!]!, j * PER);
      }
    },
  };
}

test('rotation pretext: four quarter turns, in order, labelled by the turn only', async () => {
  // Prepare: a 2x2 single-channel image [a b; c d] turns counter-clockwise to [b d; a c].
  const img = Float32Array.from([1, 2, 3, 4]);
  const out = new Float32Array(4);

  // Execute + check: one turn, two turns, four turns.
  rotateQuarterTurns(img, out, 2, 1, 1);
  assert.deepEqual([...out], [2, 4, 1, 3]);
  rotateQuarterTurns(img, out, 2, 1, 2);
  assert.deepEqual([...out], [4, 3, 2, 1]);
  rotateQuarterTurns(img, out, 2, 1, 4);
  assert.deepEqual([...out], [1, 2, 3, 4]);

  // The set: 4 entries per image, labels 0..3 by turn, pixels of the turned image; the source's labels never touched.
  const reads: number[] = [];
  const source = labelFreeSet(3, 0, reads);
  const set = rotationImageSet(source);
  assert.equal(set.count, 12);
  assert.deepEqual([...set.labels], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]);
  const got = new Float32Array(2 * PER);
  await set.read([6, 7], got); // image 1, turned twice and three times
  const src = new Float32Array(PER);
  await source.read([1], src);
  const want = new Float32Array(PER);
  rotateQuarterTurns(src, want, SIDE, C, 2);
  assert.deepEqual([...got.subarray(0, PER)], [...want]);
  rotateQuarterTurns(src, want, SIDE, C, 3);
  assert.deepEqual([...got.subarray(PER)], [...want]);
  assert.throws(() => rotationImageSet({ count: 1, shape: [4, 8, 3], paths: [], cached: 0, read: async () => {} }), /square/);
});

test('self-supervised pass: no label read, each site reads only its own images, same seed same weights', async () => {
  const dir = tempDir('ssl-pass');
  try {
    // Prepare: two sites whose images cannot reveal a label; a tiny model.
    const runtime = await loadTf('cpu');
    const spec: ModelSpec = {
      architecture: 'small-cnn',
      inputShape: [SIDE * 4, SIDE * 4, C],
      seed: 3,
      classes: ['A', 'B'],
      normalization: 'per-image',
    } as ModelSpec;
    const side = SIDE * 4;
    const per = side * side * C;
    const site = (offset: number, reads: number[]): LocalDataset => {
      const mk = (count: number, off: number): ImageSet => ({
        count,
        shape: [side, side, C],
        paths: [],
        cached: count,
        get labels(): Int32Array {
          throw new Error('the pretext read a class label');
        },
        async read(indices, out) {
          for (let j = 0; j < indices.length; j++) {
            reads.push(off + indices[j]!);
            for (let k = 0; k < per; k++) out[j * per + k] = (((off + indices[j]!) * 13 + (k % side) * (k > per / 2 ? 3 : 1)) % 17) / 17;
          }
        },
      });
      return { classes: ['A', 'B'], train: mk(6, offset), test: mk(2, offset + 1000), counts: { train: [3, 3], test: [1, 1] }, problems: [], decoder: 'js' };
    };
    const run = async (out: string) => {
      const readsA: number[] = [];
      const readsB: number[] = [];
      const r = await selfSupervisedBase({
        runtime,
        spec,
        startDir: null,
        init: 'he',
        sites: [
          { id: 'a', data: site(0, readsA) },
          { id: 'b', data: site(5000, readsB) },
        ],
        settings: { rounds: 2, epochs: 1, batchSize: 8, learningRate: 0.001 },
        trainerOptions: { shuffleSeed: 7 },
        out,
      });
      return { r, readsA, readsB };
    };

    // Execute: twice with the same seed.
    const one = await run(join(dir.path, 'one'));
    const two = await run(join(dir.path, 'two'));

    // Check: each site only its own images (train from offset, test from offset + 1000); rotation classes; a usable base; bit-identical.
    assert.ok(one.readsA.length > 0 && one.readsA.every((i) => i < 5000), 'site a reads only its own images');
    assert.ok(one.readsB.length > 0 && one.readsB.every((i) => i >= 5000), 'site b reads only its own images');
    assert.equal(one.r.rounds.length, 2);
    assert.deepEqual(Object.keys(one.r.rounds[0]!.baseMetrics).sort(), ['a', 'b']);
    assert.equal(one.r.rounds[0]!.baseMetrics.a!.confusion.length, ROTATION_CLASSES.length, 'the pretext has four classes (the turns)');
    assert.ok(existsSync(join(one.r.dir, 'model.json')));
    const info = JSON.parse(readFileSync(join(one.r.dir, 'self-supervised.json'), 'utf8')) as { pretext: string; sites: string[] };
    assert.equal(info.pretext, 'rotation');
    assert.deepEqual(info.sites, ['a', 'b']);
    const w1 = await readWeightsFromDir(one.r.dir);
    const w2 = await readWeightsFromDir(two.r.dir);
    assert.deepEqual([...w1.keys()], [...w2.keys()]);
    for (const [name, w] of w1) assert.deepEqual(Buffer.from(w.data.buffer), Buffer.from(w2.get(name)!.data.buffer), `${name} identical with the same seed`);
  } finally {
    dir.cleanup();
  }
});

test('experiment: pretrained.selfSupervised makes the common start of the pretrained arms', async () => {
  const dir = tempDir('ssl-experiment');
  try {
    // Prepare: a tiny experiment with the pass on and one pretrained arm.
    const config = parseConfig(
      experimentConfigSchema,
      {
        name: 'tiny-ssl',
        out: dir.path,
        seed: 5,
        data: { source: 'synthetic', size: 16, scale: 0.15 },
        model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 5 },
        pretrained: { epochs: 1, selfSupervised: { rounds: 1, epochs: 1 } },
        training: { epochs: 1, batchSize: 16, learningRate: 0.002, optimizer: 'adam', decoder: 'js', backend: 'cpu' },
        rounds: 1,
        arms: { centralized: false, 'local-only': false, 'federated-all': false, 'federated-random': false, 'federated-head': {} },
      },
      'test config',
    );
    const lines: string[] = [];

    // Execute
    const r = await runExperiment(config, (l) => lines.push(l));

    // Check: the pass ran on the sites and is recorded; the pretrained arm's base holds its weights (not the reference base's).
    assert.ok(r.selfSupervised, 'results.json records the pass');
    assert.equal(r.selfSupervised.pretextAccuracy.length, 1);
    assert.deepEqual(Object.keys(r.selfSupervised.pretextAccuracy[0]!).sort(), Object.keys(r.data.sites).sort());
    assert.ok(lines.some((l) => l.startsWith('self-supervised base:')));
    const adapted = await readWeightsFromDir(r.selfSupervised.dir);
    const reference = await readWeightsFromDir(r.pretrained!.dir);
    const conv = [...adapted.keys()].find((k) => k.includes('block1_conv1') && k.endsWith('kernel'))!;
    assert.notDeepEqual([...adapted.get(conv)!.data], [...reference.get(conv)!.data], 'the pass moved the base');
    // The learning curves on the held-out sets: every round's base model judged on external and probes, shown in report.md.
    const head = r.models.find((m) => m.id === 'federated-head')!;
    assert.ok(head.rounds[0]!.watchMetrics?.external && head.rounds[0]!.watchMetrics.probes, 'round 1 base model judged on external and probes');
    const report = readFileSync(join(dir.path, 'report.md'), 'utf8');
    assert.match(report, /balanced accuracy on the external set/);
    assert.match(report, /self-supervised site pass/);
    // Defaults: off unless configured.
    const plain = parseConfig(
      experimentConfigSchema,
      { data: { source: 'synthetic' }, model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 1 }, training: {}, rounds: 1 },
      'x',
    );
    assert.equal(plain.pretrained?.selfSupervised, null);
  } finally {
    dir.cleanup();
  }
});
