import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { experimentConfigSchema } from '../experiment/config.js';
import { prepareDataLayout } from '../experiment/data.js';
import { generateExperimentData } from '../synthetic-data/generate.js';
import { parseConfig } from '../shared/config/config-file.js';
import { tempDir, treeHashes } from './helpers.js';

const part = (tree: Map<string, string>, prefix: string): [string, string][] => [...tree].filter(([k]) => k.startsWith(prefix)).sort();

function config(out: string, referenceScale?: number) {
  return parseConfig(
    experimentConfigSchema,
    {
      name: 'reference-scale',
      out,
      seed: 7,
      data: { source: 'synthetic', size: 16, scale: 0.15 },
      model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 7 },
      pretrained: referenceScale === undefined ? {} : { referenceScale },
      training: { epochs: 1, batchSize: 8, learningRate: 0.001, optimizer: 'adam' },
      rounds: 1,
      arms: { centralized: {}, 'local-only': false, 'federated-all': false, 'federated-head': false, 'federated-random': false },
    },
    'test config',
  );
}

test("pretrained.referenceScale: more reference images, the clients', external and probe images unchanged", async () => {
  const dirs = [tempDir('refscale-default'), tempDir('refscale-x2'), tempDir('refscale-direct')];
  try {
    const lines: string[] = [];
    const plain = await prepareDataLayout(config(dirs[0]!.path), true, (l) => lines.push(l));
    const more = await prepareDataLayout(config(dirs[1]!.path, 0.3), true, (l) => lines.push(l));
    // What `fedline dataset synth --parts reference --scale 0.3` writes for the same seed.
    const direct = await generateExperimentData({ out: dirs[2]!.path, seed: 7, size: 16, scale: 0.3, parts: ['reference'] });
    const [a, b, c] = dirs.map((d) => treeHashes(d.path));
    for (const p of ['data/client', 'data/external/', 'data/probes/'])
      assert.deepEqual(part(b!, p), part(a!, p), `${p}: byte-identical with and without referenceScale`);
    const refA = part(a!, 'data/reference/');
    const refB = part(b!, 'data/reference/');
    assert.ok(refA.length > 0 && plain.referenceDir !== null, 'the default still generates reference images (at data.scale)');
    // Counts are rounded per product and class (at least one): twice the scale, not exactly twice the images.
    assert.ok(refB.length > 1.2 * refA.length, `twice data.scale, more reference images (${refB.length} vs ${refA.length})`);
    assert.deepEqual(
      refB.map(([k, v]) => [k.slice('data/reference/'.length), v]),
      part(c!, 'reference/').map(([k, v]) => [k.slice('reference/'.length), v]),
      'the reference images are those the generator writes at that scale',
    );
    assert.equal(more.referenceDir, direct.reference!.dir.replace(dirs[2]!.path, join(dirs[1]!.path, 'data')));
    assert.match(lines[1]!, /reference images at scale 0\.3/, 'the log says the reference scale');
  } finally {
    for (const d of dirs) d.cleanup();
  }
});

test('pretrained.referenceScale: no reference images when no base is trained', async () => {
  const dir = tempDir('refscale-none');
  try {
    const layout = await prepareDataLayout(config(dir.path, 0.3), false, () => {});
    assert.equal(layout.referenceDir, null);
    assert.ok(!readdirSync(join(dir.path, 'data')).includes('reference'), 'nothing written under data/reference');
  } finally {
    dir.cleanup();
  }
});
