#!/usr/bin/env node
// Where a V8 CPU profile's time went: self time per function, largest first (docs/scaling.md).
// usage: node scripts/profile-top.mjs FILE.cpuprofile [N]   (N lines, default 25)
// Profiles come from `node --cpu-prof`, or BENCH_CPU_PROF=DIR for every process of a benchmark.
import { readFileSync } from 'node:fs';
if (!process.argv[2]) {
  console.error('usage: node scripts/profile-top.mjs FILE.cpuprofile [N]');
  process.exit(2);
}
const p = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const n = Number(process.argv[3] ?? 25);
const byId = new Map(p.nodes.map((x) => [x.id, x]));
const dt = new Map();
for (let i = 0; i < p.samples.length; i++) dt.set(p.samples[i], (dt.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
const self = new Map();
let total = 0;
for (const [id, t] of dt) {
  const x = byId.get(id);
  const cf = x.callFrame;
  const key = `${cf.functionName || '(anon)'} ${cf.url.split('/').slice(-2).join('/')}:${cf.lineNumber}`;
  self.set(key, (self.get(key) ?? 0) + t);
  total += t;
}
console.log('total ms', (total / 1000).toFixed(0));
for (const [k, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, n))
  console.log((t / 1000).toFixed(0).padStart(8), ((100 * t) / total).toFixed(1).padStart(5) + '%', k);
