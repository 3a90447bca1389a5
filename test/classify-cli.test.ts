import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FsModelStore } from '../aggregator/model-store.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { REPO_ROOT, tempDir, tinyDataset } from './helpers.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');
const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];

function run(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) => resolve({ code, out, err }));
  });
}

test(
  'fedline classify: class and confidence per image from a stored model version, --json for machines, unreadable images named',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('classify');
    try {
      const { tf } = await loadTf('cpu');
      const store = new FsModelStore(join(dir.path, 'models'));
      await store.save(
        await buildInitialBundle(tf, {
          architecture: 'small-cnn',
          inputShape: [16, 16, 3],
          classes: CLASSES,
          seed: 1,
          normalization: 'per-image',
          initFrom: undefined,
        }),
      );
      await tinyDataset(join(dir.path, 'data'), ['site'], 2, 16);
      const images = ['OKAY', 'EMPTY'].map((c) => join(dir.path, 'data', 'site', c, readdirSync(join(dir.path, 'data', 'site', c))[0]!));
      const broken = join(dir.path, 'broken.png');
      writeFileSync(broken, 'not an image');

      const human = await run(['classify', '--model', store.dir(0), ...images]);
      assert.equal(human.code, 0, human.err);
      const lines = human.out.trim().split('\n');
      assert.equal(lines.length, 2);
      lines.forEach((line, i) =>
        assert.match(line, new RegExp(`^${images[i]!.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\s+(OKAY|NOT_OKAY|HIDDEN|EMPTY)\\s+confidence 0\\.\\d{3}$`)),
      );

      const machine = await run(['classify', '--model', store.dir(0), '--json', images[0]!, broken]);
      assert.equal(machine.code, 1, 'an unreadable image: exit code 1');
      const doc = JSON.parse(machine.out) as {
        version: number;
        classes: string[];
        results: { path: string; class: string | null; confidence: number | null; probabilities: Record<string, number>; error?: string }[];
      };
      assert.equal(doc.version, 0);
      assert.deepEqual(doc.classes, CLASSES);
      const [good, bad] = doc.results;
      assert.ok(CLASSES.includes(good!.class!));
      const probs = Object.values(good!.probabilities);
      assert.ok(Math.abs(probs.reduce((s, p) => s + p, 0) - 1) < 1e-4, 'probabilities sum to 1');
      assert.equal(good!.confidence, Math.max(...probs));
      assert.equal(bad!.class, null);
      assert.match(bad!.error!, /broken\.png: not a PNG or JPEG file/);

      const usage = await run(['classify', images[0]!]);
      assert.equal(usage.code, 2);
      assert.match(usage.err, /--model DIR is required/);
    } finally {
      dir.cleanup();
    }
  },
);
