// ESLint: defect-catching rules (eslint + typescript-eslint "recommended") and the layer rules of
// docs/development.md. Run by `npm run lint` (and so by `npm test`); test/lint-rules.test.ts proves
// that each layer rule fails when it should.
//
// Not type-aware: typescript-eslint's type-checked rule set takes ~45 s on this tree (2 cores)
// against ~8 s without it, and `npm test` runs lint every time.
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import { createNodeResolver, importX } from 'eslint-plugin-import-x';
import tseslint from 'typescript-eslint';

const root = dirname(fileURLToPath(import.meta.url));

// The layers, low to high. A folder may import its own layer and the layers below it, never one
// above; folders on the same rung never import each other (the three services stand side by side;
// nothing imports bench/ or test/ except test/ itself).
// prettier-ignore
const LAYERS = [
  ['shared'],
  ['training'],
  ['broker', 'aggregator', 'edge-agent', 'dashboard'],
  ['plant'],
  ['synthetic-data'],
  ['demo'],
  ['experiment'],
  ['cli'],
  ['bench', 'test'],
];

const why = 'See "Layers" in docs/development.md.';

/** One no-restricted-paths zone per forbidden (folder, imported folder) pair, so each error names both. */
function layerZones() {
  const zones = [];
  LAYERS.forEach((rung, i) => {
    for (const folder of rung) {
      // shared/ has a stricter zone of its own below (nothing outside shared/ at all).
      if (folder === 'shared') continue;
      const siblings = rung.filter((f) => f !== folder);
      for (const other of siblings) {
        zones.push({ target: `./${folder}`, from: `./${other}`, message: `${folder}/ and ${other}/ sit side by side and never import each other. ${why}` });
      }
      for (const higher of LAYERS.slice(i + 1).flat()) {
        zones.push({ target: `./${folder}`, from: `./${higher}`, message: `${folder}/ is a lower layer than ${higher}/ and must not import it. ${why}` });
      }
    }
  });
  return zones;
}

const extraZones = [
  {
    target: './shared',
    from: '.',
    except: ['./shared', './node_modules'],
    message: `shared/ is the bottom layer: it imports only shared/ and packages. ${why}`,
  },
  {
    target: './shared',
    from: './node_modules/@tensorflow',
    message: `shared/ never loads TensorFlow.js; tfjs code lives in training/. ${why}`,
  },
  {
    target: './shared/fl',
    from: ['./shared/transport', './node_modules/mqtt', './node_modules/aedes'],
    message: `shared/fl is pure FL math: no transport, no MQTT. ${why}`,
  },
  {
    // aggregator/main.ts is left out here: it may load training/ lazily, with `await import()`, to
    // build model version 0 (its static imports of training/ are refused by no-restricted-imports below).
    target: ['./aggregator/!(main).ts', './aggregator/*/**'],
    from: './training',
    message: `the aggregator averages plain typed arrays and never loads training/ (only aggregator/main.ts may, with await import()). ${why}`,
  },
  {
    target: './aggregator',
    from: './node_modules/@tensorflow',
    message: `the aggregator never imports TensorFlow.js (aggregator/main.ts reaches it through training/, lazily). ${why}`,
  },
];

// Node's built-ins do not resolve to a file, so no-restricted-paths cannot see them: the I/O
// modules shared/fl must not use are listed by name instead.
const ioModules = ['fs', 'fs/promises', 'net'].flatMap((m) => [m, `node:${m}`]);

export default defineConfig(
  { ignores: ['dist/', 'node_modules/', 'examples/'] },

  {
    files: ['**/*.ts'],
    extends: [js.configs.recommended, tseslint.configs.recommended],
    rules: {
      // A few defect rules beyond "recommended" that the tree already passes.
      eqeqeq: ['error', 'smart'],
      'no-self-compare': 'error',
      'no-template-curly-in-string': 'error',
      'no-unreachable-loop': 'error',
      'array-callback-return': 'error',
      // tsc already reports unused locals and parameters; this keeps eslint from flagging the
      // `const { dropped: _x, ...rest } = obj` idiom and names marked unused with a leading underscore.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
      // `declare namespace` describes globals the TypeScript libs lack (WebAssembly in shared/fl/fedavg-simd.ts).
      '@typescript-eslint/no-namespace': ['error', { allowDeclarations: true }],
    },
  },

  {
    files: ['**/*.js', '**/*.mjs'],
    extends: [js.configs.recommended],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', URL: 'readonly' } },
  },
  {
    // The dashboard's page scripts run in the browser, as ES modules (the browser globals they use,
    // listed by hand: `globals` is not a dependency of this repository).
    files: ['dashboard/static/**/*.js'],
    languageOptions: {
      sourceType: 'module',
      globals: { document: 'readonly', window: 'readonly', fetch: 'readonly', EventSource: 'readonly', Node: 'readonly', setInterval: 'readonly' },
    },
  },

  // The layer rules. no-restricted-paths resolves every import (static and `await import()`) to a
  // file and checks which folder it lands in, so the rules hold at any depth of relative path.
  {
    files: ['**/*.ts'],
    plugins: { 'import-x': importX },
    settings: {
      // Sources import './x.js' for './x.ts' (NodeNext): resolve .js to the .ts beside it.
      'import-x/resolver-next': [createNodeResolver({ extensionAlias: { '.js': ['.ts', '.js'] } })],
    },
    rules: {
      'import-x/no-restricted-paths': ['error', { basePath: root, zones: [...layerZones(), ...extraZones] }],
    },
  },
  {
    files: ['shared/fl/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { paths: ioModules.map((name) => ({ name, message: `shared/fl is pure FL math: no file or network I/O. ${why}` })) }],
      // no-restricted-imports sees static imports only; this refuses `await import('node:fs')` too.
      'no-restricted-syntax': [
        'error',
        {
          selector: `ImportExpression > Literal[value=/^(node:)?(fs|fs\\/promises|net)$/]`,
          message: `shared/fl is pure FL math: no file or network I/O. ${why}`,
        },
      ],
    },
  },
  {
    files: ['aggregator/main.ts'],
    rules: {
      // no-restricted-imports checks static imports only, so `await import('../training/x.js')` passes.
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['../training/*'],
              // Type-only imports are erased at compile time: they load nothing.
              allowTypeImports: true,
              message: `aggregator/main.ts loads training/ only lazily, with await import(): the aggregator must start without TensorFlow.js. ${why}`,
            },
          ],
        },
      ],
    },
  },
);
