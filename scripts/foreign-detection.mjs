#!/usr/bin/env node
// Goal 3's figures seed by seed (experiment/foreign-defect-goals.ts): for each local-only model, its
// site's foreign sets (the other sites' test splits and the probes with another site's defect) as
// "recall / false alarms / J" (in %) of that model and of every federated model of the same seed.
// Takes the results.json files rank-results.mjs takes (runs of the same seed are merged), after `npm run build`.
// usage: node scripts/foreign-detection.mjs RESULTS.json [RESULTS.json ...]
import { readFileSync } from 'node:fs';

const root = new URL('../dist/experiment/', import.meta.url).pathname;
const { foreignDetection } = await import(`${root}findings.js`);
const { rankInputsOf } = await import(`${root}ranking.js`);

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node scripts/foreign-detection.mjs RESULTS.json [RESULTS.json ...]');
  process.exit(2);
}
const runs = rankInputsOf(files.map((f) => JSON.parse(readFileSync(f, 'utf8')))).sort((a, b) => a.seed - b.seed);
const pct = (x) => (x === null ? '-' : (100 * x).toFixed(1));
for (const run of runs) {
  if (run.defectIndex < 0) continue;
  const federated = run.models.filter((m) => m.arm !== 'local-only' && m.arm !== 'centralized');
  for (const local of run.models.filter((m) => m.arm === 'local-only')) {
    const cell = (m) => {
      const d = foreignDetection(m, local.site, run.sites, run.probes, run.defectIndex);
      return `${m.id} ${pct(d.recall)} / ${pct(d.falseAlarm)} / ${pct(d.informedness)}`;
    };
    console.log(`seed ${run.seed}, ${local.site}'s foreign sets: ${[local, ...federated].map(cell).join('; ')}`);
  }
}
