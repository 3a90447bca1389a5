#!/usr/bin/env node
// `npm run bench:attacks`: runs the attack tests of the fault suite (test/faults/attack-*.test.ts:
// three honest sites, one attacker, each aggregation strategy) and prints the table of
// docs/reliability.md: per attack and strategy, the honest sites' accuracy on the model before the
// attack round and on the attack round's candidate, and the largest drop.
// usage: node scripts/attack-table.mjs [--json FILE]   (after `npm run build`)
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const jsonAt = process.argv.indexOf('--json');
const jsonFile = jsonAt > 0 ? process.argv[jsonAt + 1] : null;
const dir = mkdtempSync(join(tmpdir(), 'fedline-attacks-'));
const report = join(dir, 'attacks.jsonl');
writeFileSync(report, '');
const run = spawnSync(process.execPath, [new URL('run-tests.mjs', import.meta.url).pathname, 'faults/attack-'], {
  stdio: 'inherit',
  env: { ...process.env, FEDLINE_ATTACK_REPORT: report },
});
const results = readFileSync(report, 'utf8')
  .split('\n')
  .filter((l) => l.trim())
  .map((l) => JSON.parse(l));
rmSync(dir, { recursive: true, force: true });
if (jsonFile) writeFileSync(jsonFile, JSON.stringify(results, null, 2) + '\n');

const attacks = ['sign-flip', 'random-direction', 'flipped-labels', 'free-rider'];
const strategies = ['fedavg', 'fedavg-clipped', 'trimmed-mean', 'median'];
const mean = (m) => Object.values(m).reduce((s, v) => s + v, 0) / Object.values(m).length;
const cell = (r) => (r ? `${mean(r.before).toFixed(2)} -> ${mean(r.candidate).toFixed(2)} (worst site ${r.maxDrop > 0 ? '-' : '+'}${Math.abs(r.maxDrop).toFixed(2)})` : 'not run');
console.log('');
console.log(`| attack | ${strategies.join(' | ')} |`);
console.log(`|---|${strategies.map(() => '---').join('|')}|`);
for (const a of attacks) {
  console.log(`| ${a} | ${strategies.map((s) => cell(results.find((r) => r.attack === a && r.strategy === s))).join(' | ')} |`);
}
console.log('');
console.log('cells: mean honest accuracy on the model before the attack round -> on its candidate (the worst honest site\'s change)');
process.exit(run.status ?? 1);
