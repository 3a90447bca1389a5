import { test } from 'node:test';
import assert from 'node:assert/strict';
import { experimentConfigSchema } from '../experiment/config.js';
import { prepareDataLayout } from '../experiment/data.js';
import { EXTERNAL_PRODUCT, generateExperimentData, PRETRAIN_CLIENTS, pretrainClients, REFERENCE_TONGUES } from '../synthetic-data/generate.js';
import { tongueColour } from '../synthetic-data/scenes.js';
import { mulberry32 } from '../shared/util/random.js';
import { parseConfig } from '../shared/config/config-file.js';
import { tempDir, treeHashes } from './helpers.js';

// pretrained.references / --references varied-tongues: reference products whose contact tongues
// vary in colour; every other generated image stays byte for byte as it was.
const part = (tree: Map<string, string>, prefix: string): [string, string][] => [...tree].filter(([k]) => k.startsWith(prefix)).sort();

function config(out: string, references?: string) {
  return parseConfig(
    experimentConfigSchema,
    {
      name: 'reference-tongues',
      out,
      seed: 7,
      data: { source: 'synthetic', size: 16, scale: 0.15 },
      model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 7 },
      pretrained: references === undefined ? {} : { references },
      training: { epochs: 1, batchSize: 8, learningRate: 0.001, optimizer: 'adam' },
      rounds: 1,
      arms: { centralized: {}, 'local-only': false, 'federated-all': false, 'federated-head': false, 'federated-random': false },
    },
    'test config',
  );
}

test("pretrained.references varied-tongues: other reference images, the clients', external and probe images unchanged", async () => {
  const dirs = [tempDir('tongues-default'), tempDir('tongues-varied'), tempDir('tongues-direct'), tempDir('tongues-classic')];
  try {
    const lines: string[] = [];
    await prepareDataLayout(config(dirs[0]!.path), true, () => {});
    await prepareDataLayout(config(dirs[1]!.path, 'varied-tongues'), true, (l) => lines.push(l));
    await generateExperimentData({ out: dirs[2]!.path, seed: 7, size: 16, scale: 0.15, parts: ['reference'], references: 'varied-tongues' });
    await prepareDataLayout(config(dirs[3]!.path, 'classic'), true, () => {});
    const [a, b, c, d] = dirs.map((x) => treeHashes(x.path));
    for (const p of ['data/client', 'data/external/', 'data/probes/'])
      assert.deepEqual(part(b!, p), part(a!, p), `${p}: byte-identical with and without varied tongues`);
    assert.deepEqual(d, a, 'classic is the default, byte for byte');
    const refA = part(a!, 'data/reference/');
    const refB = part(b!, 'data/reference/');
    assert.deepEqual(
      refB.map(([k]) => k),
      refA.map(([k]) => k),
      'the same reference products, classes and counts',
    );
    const byName = new Map(refA);
    const okay = refB.filter(([k]) => k.includes('/OKAY/'));
    const changed = okay.filter(([k, h]) => byName.get(k) !== h).length;
    assert.ok(changed === okay.length, `every OKAY reference image (a visible tongue) differs (${changed} of ${okay.length})`);
    const hidden = refB.filter(([k]) => k.includes('/HIDDEN/') || k.includes('/EMPTY/'));
    assert.ok(hidden.length > 0 && hidden.every(([k, h]) => byName.get(k) === h), 'HIDDEN and EMPTY images (no port to see) unchanged');
    assert.deepEqual(
      refB.map(([k, v]) => [k.slice('data/reference/'.length), v]),
      part(c!, 'reference/').map(([k, v]) => [k.slice('reference/'.length), v]),
      'the images `fedline dataset synth --parts reference --references varied-tongues` writes',
    );
    assert.match(lines[0]!, /varied-tongues reference images/, 'the log names the reference set');
  } finally {
    for (const x of dirs) x.cleanup();
  }
});

test("varied tongues: every palette colour drawn, at tones of x0.85-1.15, never the external product's; none drawn without a palette", () => {
  const varied = pretrainClients('varied-tongues');
  assert.equal(pretrainClients('classic'), PRETRAIN_CLIENTS);
  assert.deepEqual(
    varied.map((c) => [c.name, c.defect, c.counts, c.product.shape, c.product.color]),
    PRETRAIN_CLIENTS.map((c) => [c.name, c.defect, c.counts, c.product.shape, c.product.color]),
    'the same products, defects and counts',
  );
  assert.ok(!REFERENCE_TONGUES.some((t) => t.every((v, i) => v === EXTERNAL_PRODUCT.tongue![i])), "the external product's tongue is not in the palette");
  const rng = mulberry32(11);
  const used = new Set<number>();
  for (let n = 0; n < 400; n++) {
    const c = tongueColour(varied[0]!.product, rng);
    const from = REFERENCE_TONGUES.findIndex((t) => {
      const k = t.map((v, i) => (v === 0 ? 1 : c[i]! / v));
      return k.every((x) => Math.abs(x - k[0]!) < 1e-9 && x >= 0.85 && x <= 1.15);
    });
    assert.ok(from >= 0, `colour ${c.join(',')} is a palette colour at a tone in [0.85, 1.15]`);
    used.add(from);
  }
  assert.equal(used.size, REFERENCE_TONGUES.length, 'every palette colour drawn');
  const plain = mulberry32(11);
  const untouched = mulberry32(11);
  assert.deepEqual(tongueColour(PRETRAIN_CLIENTS[0]!.product, plain), [150, 130, 70], 'the default tongue');
  assert.deepEqual(tongueColour(EXTERNAL_PRODUCT, plain), [...EXTERNAL_PRODUCT.tongue!], "a product's own tongue");
  assert.equal(plain(), untouched(), "no random draw without a palette: the clients', external and probe images keep their streams");
});
