#!/usr/bin/env node
// `npm run bench:attacks`: runs the attack tests of the fault suite (test/faults/attack-*.test.ts:
// three honest sites, one attacker, each aggregation strategy) and prints the table of
// docs/reliability.md: per attack and strategy, the honest sites' accuracy on the model before the
// attack round and on the attack round's candidate, and the largest drop; then the release gates'
// verdict, and the released version before and after with its balanced accuracy (default policy).
// usage: node scripts/attack-table.mjs [--json FILE] [ATTACK ...]   (after `npm run build`)
//   ATTACK: none (the baseline), sign-flip, random-direction, flipped-labels, free-rider (default: all)
//   --json FILE: the runs as JSON lines; runs already in FILE are kept (a later run of the same
//   attack and strategy replaces them), so one attack can be rerun into an existing table
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = process.argv.slice(2);
const jsonAt = args.indexOf('--json');
const jsonFile = jsonAt >= 0 ? args.splice(jsonAt, 2)[1] : join(mkdtempSync(join(tmpdir(), 'fedline-attacks-')), 'attacks.jsonl');
const filters = args.length ? args.map((a) => `faults/attack-${a}`) : ['faults/attack-'];
const read = () =>
  existsSync(jsonFile)
    ? readFileSync(jsonFile, 'utf8')
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l))
    : [];
const earlier = read();
writeFileSync(jsonFile, '');
const run = spawnSync(process.execPath, [new URL('run-tests.mjs', import.meta.url).pathname, ...filters], {
  stdio: 'inherit',
  env: { ...process.env, FEDLINE_ATTACK_REPORT: jsonFile },
});
const fresh = read();
const results = [...earlier.filter((e) => !fresh.some((f) => f.attack === e.attack && f.strategy === e.strategy)), ...fresh];
writeFileSync(jsonFile, results.map((r) => JSON.stringify(r)).join('\n') + '\n');
console.log(`runs: ${jsonFile}`);

const attacks = ['none', 'sign-flip', 'random-direction', 'flipped-labels', 'free-rider'];
const strategies = ['fedavg', 'fedavg-clipped', 'trimmed-mean', 'median'];
const mean = (m) => Object.values(m).reduce((s, v) => s + v, 0) / Object.values(m).length;
const worst = (d) => `${d > 0 ? '-' : '+'}${Math.abs(d).toFixed(2)}`;
const cell = (r) =>
  r
    ? `${mean(r.before).toFixed(2)} -> ${mean(r.candidate).toFixed(2)} (worst site ${worst(r.maxDrop)})` +
      (r.released ? `; ${r.verdict === 'released' ? 'released' : 'rejected'}, lines on v${r.releasedAfter}: ${mean(r.released).toFixed(2)}` : '')
    : 'not run';
const releasedCell = (r) =>
  r?.releasedBalanced
    ? `v${r.releasedBefore} -> v${r.releasedAfter}: ${mean(r.releasedBeforeBalanced).toFixed(2)} -> ${mean(r.releasedBalanced).toFixed(2)} (worst site ${worst(r.releasedMaxDrop)})`
    : 'not run';
const table = (title, f) => {
  console.log('');
  console.log(`| ${title} | ${strategies.join(' | ')} |`);
  console.log(`|---|${strategies.map(() => '---').join('|')}|`);
  for (const a of attacks) console.log(`| ${a} | ${strategies.map((s) => f(results.find((r) => r.attack === a && r.strategy === s))).join(' | ')} |`);
  console.log('');
};
table('attack: accuracy', cell);
console.log(
  "cells: mean honest accuracy on the model before the attack round -> on its candidate (the worst honest site's change); the release gates' verdict on the candidate, the version the lines run after it and its mean honest accuracy",
);
table('attack: released, balanced accuracy', releasedCell);
console.log(
  "cells: the released version before the candidate was decided on -> after, the honest sites' mean balanced accuracy on each (what the regression gate compares) and the worst honest site's change",
);
process.exit(run.status ?? 1);
