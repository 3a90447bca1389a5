// The layer rules of eslint.config.js can fail: lint one-line snippets placed (by file path) inside
// a layer and expect an error for each forbidden direction, none for the allowed ones. The snippets
// import a real .ts file of the target folder, because the rules resolve imports to files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';

// This file runs as dist/test/lint-rules.test.js.
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const LAYER_RULES = new Set(['import-x/no-restricted-paths', 'no-restricted-imports', 'no-restricted-syntax']);

const eslint = new ESLint({ cwd: ROOT });

/** A real module of `folder` (relative to the repo root), as an import path ending in .js. */
function moduleIn(folder: string): string {
  const file = readdirSync(join(ROOT, folder))
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .sort()[0];
  assert.ok(file, `no .ts file in ${folder}/`);
  return `${folder}/${file.replace(/\.ts$/, '.js')}`;
}

/** Lint `code` as if it were the file `filePath` (relative to the repo root); the messages of the layer rules. */
async function layerErrors(filePath: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: join(ROOT, filePath) });
  assert.ok(result, `no lint result for ${filePath}`);
  const other = result.messages.filter((m) => !m.ruleId || !LAYER_RULES.has(m.ruleId));
  assert.deepEqual(other, [], `${filePath}: the snippet should trip no other rule`);
  return result.messages.map((m) => `${m.ruleId}: ${m.message}`);
}

/** `../` as many times as `filePath` is deep, then `target`: the relative import of `target` from `filePath`. */
function from(filePath: string, target: string): string {
  return '../'.repeat(filePath.split('/').length - 1) + target;
}

const forbidden: { name: string; file: string; code: (file: string) => string }[] = [
  { name: 'aggregator -> edge-agent', file: 'aggregator/probe.ts', code: (f) => `import '${from(f, moduleIn('edge-agent'))}';` },
  { name: 'edge-agent -> aggregator (nested)', file: 'edge-agent/triggers/sources/probe.ts', code: (f) => `import '${from(f, moduleIn('aggregator'))}';` },
  { name: 'broker -> aggregator', file: 'broker/probe.ts', code: (f) => `import '${from(f, moduleIn('aggregator'))}';` },
  { name: 'broker -> edge-agent', file: 'broker/probe.ts', code: (f) => `import '${from(f, moduleIn('edge-agent'))}';` },
  { name: 'shared/fl -> node:fs', file: 'shared/fl/probe.ts', code: () => `import 'node:fs';` },
  { name: 'shared/fl -> fs/promises (dynamic)', file: 'shared/fl/probe.ts', code: () => `export const load = () => import('node:fs/promises');` },
  { name: 'shared/fl -> node:net', file: 'shared/fl/probe.ts', code: () => `import 'node:net';` },
  { name: 'shared/fl -> mqtt', file: 'shared/fl/probe.ts', code: () => `import 'mqtt';` },
  { name: 'shared/fl -> shared/transport', file: 'shared/fl/probe.ts', code: (f) => `import '${from(f, moduleIn('shared/transport'))}';` },
  { name: 'shared/fl -> @tensorflow/tfjs', file: 'shared/fl/probe.ts', code: () => `import '@tensorflow/tfjs';` },
  { name: 'shared -> @tensorflow/tfjs (dynamic)', file: 'shared/util/probe.ts', code: () => `export const load = () => import('@tensorflow/tfjs');` },
  { name: 'shared -> aggregator', file: 'shared/protocol/probe.ts', code: (f) => `import '${from(f, moduleIn('aggregator'))}';` },
  { name: 'shared -> training (dynamic)', file: 'shared/util/probe.ts', code: (f) => `export const load = () => import('${from(f, moduleIn('training'))}');` },
  { name: 'shared -> scripts (outside every layer)', file: 'shared/util/probe.ts', code: (f) => `import '${from(f, 'scripts/run-tests.mjs')}';` },
  { name: 'training -> demo', file: 'training/probe.ts', code: (f) => `import '${from(f, moduleIn('demo'))}';` },
  { name: 'training -> edge-agent', file: 'training/probe.ts', code: (f) => `import '${from(f, moduleIn('edge-agent'))}';` },
  { name: 'aggregator -> training', file: 'aggregator/probe.ts', code: (f) => `import '${from(f, moduleIn('training'))}';` },
  {
    name: 'aggregator -> training (dynamic, not main.ts)',
    file: 'aggregator/probe.ts',
    code: (f) => `export const load = () => import('${from(f, moduleIn('training'))}');`,
  },
  { name: 'aggregator -> @tensorflow/tfjs', file: 'aggregator/probe.ts', code: () => `import '@tensorflow/tfjs';` },
  { name: 'aggregator/main.ts -> training (static)', file: 'aggregator/main.ts', code: (f) => `import '${from(f, moduleIn('training'))}';` },
  { name: 'aggregator/main.ts -> @tensorflow/tfjs (dynamic)', file: 'aggregator/main.ts', code: () => `export const load = () => import('@tensorflow/tfjs');` },
  { name: 'synthetic-data -> demo', file: 'synthetic-data/probe.ts', code: (f) => `import '${from(f, moduleIn('demo'))}';` },
  { name: 'aggregator -> plant', file: 'aggregator/probe.ts', code: (f) => `import '${from(f, moduleIn('plant'))}';` },
  { name: 'edge-agent -> plant', file: 'edge-agent/probe.ts', code: (f) => `import '${from(f, moduleIn('plant'))}';` },
  { name: 'plant -> synthetic-data', file: 'plant/probe.ts', code: (f) => `import '${from(f, moduleIn('synthetic-data'))}';` },
  { name: 'plant -> demo', file: 'plant/probe.ts', code: (f) => `import '${from(f, moduleIn('demo'))}';` },
  { name: 'experiment -> cli', file: 'experiment/probe.ts', code: (f) => `import '${from(f, moduleIn('cli'))}';` },
  { name: 'cli -> bench', file: 'cli/probe.ts', code: (f) => `import '${from(f, moduleIn('bench'))}';` },
  { name: 'bench -> test', file: 'bench/probe.ts', code: (f) => `import '${from(f, 'test/helpers.js')}';` },
  { name: 'test -> bench', file: 'test/probe.ts', code: (f) => `import '${from(f, moduleIn('bench'))}';` },
];

const allowed: { name: string; file: string; code: (file: string) => string }[] = [
  {
    name: 'aggregator/main.ts -> training (dynamic)',
    file: 'aggregator/main.ts',
    code: (f) => `export const load = () => import('${from(f, moduleIn('training'))}');`,
  },
  {
    name: 'aggregator/main.ts -> training (type only)',
    file: 'aggregator/main.ts',
    code: (f) => `import type * as training from '${from(f, moduleIn('training'))}';\nexport type T = typeof training;`,
  },
  { name: 'aggregator -> shared', file: 'aggregator/probe.ts', code: (f) => `import '${from(f, moduleIn('shared/protocol'))}';` },
  { name: 'edge-agent -> training', file: 'edge-agent/triggers/probe.ts', code: (f) => `import '${from(f, moduleIn('training'))}';` },
  { name: 'broker -> shared', file: 'broker/probe.ts', code: (f) => `import '${from(f, moduleIn('shared/transport'))}';` },
  { name: 'shared/fl -> shared/protocol', file: 'shared/fl/probe.ts', code: (f) => `import '${from(f, moduleIn('shared/protocol'))}';` },
  { name: 'shared/transport -> mqtt, node:fs', file: 'shared/transport/probe.ts', code: () => `import 'mqtt';\nimport 'node:fs';` },
  { name: 'training -> @tensorflow/tfjs', file: 'training/probe.ts', code: () => `import '@tensorflow/tfjs';` },
  { name: 'synthetic-data -> training', file: 'synthetic-data/probe.ts', code: (f) => `import '${from(f, moduleIn('training'))}';` },
  {
    name: 'demo -> aggregator, broker, edge-agent',
    file: 'demo/probe.ts',
    code: (f) => ['aggregator', 'broker', 'edge-agent'].map((d) => `import '${from(f, moduleIn(d))}';`).join('\n'),
  },
  {
    name: 'plant -> aggregator, edge-agent, training',
    file: 'plant/probe.ts',
    code: (f) => ['aggregator', 'edge-agent', 'training'].map((d) => `import '${from(f, moduleIn(d))}';`).join('\n'),
  },
  { name: 'demo -> plant', file: 'demo/probe.ts', code: (f) => `import '${from(f, moduleIn('plant'))}';` },
  { name: 'cli -> experiment', file: 'cli/probe.ts', code: (f) => `import '${from(f, moduleIn('experiment'))}';` },
  { name: 'bench -> cli', file: 'bench/probe.ts', code: (f) => `import '${from(f, moduleIn('cli'))}';` },
  {
    name: 'test -> test, aggregator, edge-agent',
    file: 'test/faults/probe.ts',
    code: (f) => `import '../helpers.js';\nimport '${from(f, moduleIn('aggregator'))}';\nimport '${from(f, moduleIn('edge-agent'))}';`,
  },
];

test('layer rules: every forbidden import direction is an error', async () => {
  for (const c of forbidden) {
    const errors = await layerErrors(c.file, c.code(c.file));
    assert.ok(errors.length > 0, `${c.name}: expected a lint error for ${c.file}: ${c.code(c.file)}`);
  }
});

test('layer rules: the allowed directions pass', async () => {
  for (const c of allowed) {
    assert.deepEqual(await layerErrors(c.file, c.code(c.file)), [], `${c.name}: ${c.file}: ${c.code(c.file)}`);
  }
});
