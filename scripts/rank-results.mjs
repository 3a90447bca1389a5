#!/usr/bin/env node
// Ranks the federated models of several `fedline experiment` results.json files together, as one
// run with all their recipes and seeds would (experiment/ranking.ts): e.g. the recipes of one config
// split over several processes or machines, each a single-seed run on the same config and seed.
// Writes OUT/results.json and OUT/report.md (after `npm run build`).
// usage: node scripts/rank-results.mjs OUT RESULTS.json [RESULTS.json ...]
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = new URL('../dist/experiment/', import.meta.url).pathname;
const { rankInputsOf, rankRuns } = await import(join(root, 'ranking.js'));
const { renderMultiSeedReport } = await import(join(root, 'ranking-report.js'));

const [out, ...files] = process.argv.slice(2);
if (!out || files.length === 0) {
  console.error('usage: node scripts/rank-results.mjs OUT RESULTS.json [RESULTS.json ...]');
  process.exit(2);
}
const results = files.map((f) => ({ ...JSON.parse(readFileSync(f, 'utf8')), file: resolve(f) }));
const first = results[0];
const inputs = rankInputsOf(results);
const merged = {
  name: first.name,
  seeds: inputs.map((i) => i.seed),
  startedAt: first.startedAt,
  durationMs: results.reduce((s, r) => s + r.durationMs, 0),
  config: first.config,
  runs: results.map((r) => ({ seed: r.config.seed, dir: dirname(r.file), durationMs: r.durationMs })),
  ranking: rankRuns(inputs, first.config.goals),
};
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'results.json'), JSON.stringify(merged, null, 2) + '\n');
writeFileSync(
  join(out, 'report.md'),
  renderMultiSeedReport(merged, first.defectClass, (p) => relative(out, p) || '.'),
);
for (const m of merged.ranking.models)
  console.log(
    `${m.rank ?? '-'}\t${m.id}\texternal bal ${m.externalBalanced ? (100 * m.externalBalanced.mean).toFixed(1) : '-'}\tprobe defect ${m.probeDefectRecall ? (100 * m.probeDefectRecall.mean).toFixed(1) : '-'}\tmax decline ${m.maxDecline === null ? '-' : (100 * m.maxDecline).toFixed(1)}`,
  );
for (const g of merged.ranking.goals) console.log(`${g.holds === null ? 'n/a' : g.holds ? 'PASS' : 'FAIL'}: ${g.goal}. ${g.detail}`);
