#!/usr/bin/env node
// Compares two models of a multi-seed `fedline experiment` run seed by seed (paired: same images,
// splits and init on each seed): per figure, each model's mean ± sample sd, the difference on
// every seed, how many seeds each wins, the mean difference ± its sd, the paired t statistic (with
// its two-sided p, n - 1 degrees of freedom) and the exact two-sided sign-test p (ties dropped);
// then each model's bytes per round (up, down; every site together) from the seeds' results.json.
// Reads OUT/results.json (its `ranking`; a multi-seed run's, or scripts/rank-results.mjs's merge of
// several runs) and each seed's results.json (OUT/seed-<s>, or the folder its `runs` names).
// usage: node scripts/compare-recipes.mjs OUT MODEL_A MODEL_B   e.g. recipe:scaffold-all recipe:fedavg-all
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const [out, a, b] = process.argv.slice(2);
if (!out || !a || !b) {
  console.error('usage: node scripts/compare-recipes.mjs OUT MODEL_A MODEL_B');
  process.exit(2);
}
const top = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
const seeds = top.ranking.seeds;
const ranked = (id) => {
  const m = top.ranking.models.find((x) => x.id === id);
  if (!m) throw new Error(`${id} is not in ${out}/results.json (models: ${top.ranking.models.map((x) => x.id).join(', ')})`);
  return m;
};
const A = ranked(a);
const B = ranked(b);
const meanOf = (xs) => xs.reduce((s, x) => s + x, 0) / xs.length;
const sdOf = (xs) => (xs.length > 1 ? Math.sqrt(xs.reduce((s, x) => s + (x - meanOf(xs)) ** 2, 0) / (xs.length - 1)) : 0);
const pct = (x) => (100 * x).toFixed(1);
const choose = (n, k) => {
  let c = 1;
  for (let i = 1; i <= k; i++) c = (c * (n - i + 1)) / i;
  return c;
};
/** ln Γ(x) (Lanczos, g = 7): for the incomplete beta below. */
const lnGamma = (x) => {
  const c = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012,
    9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lnGamma(1 - x);
  let a = c[0];
  const t = x - 1 + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x - 1 + i);
  return 0.5 * Math.log(2 * Math.PI) + (x - 0.5) * Math.log(t) - t + Math.log(a);
};
/** Regularized incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes betacf). */
const incompleteBeta = (x, a, b) => {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  if (x > (a + 1) / (a + b + 2)) return 1 - incompleteBeta(1 - x, b, a);
  const front = Math.exp(lnGamma(a + b) - lnGamma(a) - lnGamma(b) + a * Math.log(x) + b * Math.log(1 - x)) / a;
  let f = 1;
  let c = 1;
  let d = 1 - ((a + b) * x) / (a + 1);
  d = 1 / (Math.abs(d) < 1e-300 ? 1e-300 : d);
  f = d;
  for (let m = 1; m <= 300; m++) {
    for (const num of [(m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m)), (-(a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))]) {
      d = 1 + num * d;
      d = 1 / (Math.abs(d) < 1e-300 ? 1e-300 : d);
      c = 1 + num / c;
      if (Math.abs(c) < 1e-300) c = 1e-300;
      f *= c * d;
    }
    if (Math.abs(c * d - 1) < 1e-12) break;
  }
  return front * f;
};
/** Two-sided p of Student's t with df degrees of freedom. */
const tTestP = (t, df) => (Number.isFinite(t) ? incompleteBeta(df / (df + t * t), df / 2, 0.5) : NaN);
/** Exact two-sided sign test: ties dropped, P(at least this lopsided) under a fair coin. */
const signTestP = (wins, losses) => {
  const n = wins + losses;
  const k = Math.min(wins, losses);
  let tail = 0;
  for (let i = 0; i <= k; i++) tail += choose(n, i) / 2 ** n;
  return Math.min(1, 2 * tail);
};

console.log(`${a} against ${b}, ${seeds.length} seeds (${seeds.join(', ')}), ${out}`);
console.log('| figure | A mean ± sd | B mean ± sd | A - B on each seed | seeds A wins / B wins / tied | mean diff ± sd | paired t (p) | sign-test p |');
console.log('|---|---:|---:|---|---:|---:|---:|---:|');
for (const [key, name] of [
  ['externalBalanced', 'external balanced'],
  ['probeDefectRecall', 'probe defect recall'],
  ['minSiteAccuracy', 'min site accuracy'],
  ['localBalanced', 'local balanced'],
]) {
  const x = A[key]?.values;
  const y = B[key]?.values;
  if (!x || !y) continue;
  const d = x.map((v, i) => v - y[i]);
  const wins = d.filter((v) => v > 1e-9).length;
  const losses = d.filter((v) => v < -1e-9).length;
  const t = sdOf(d) > 0 ? meanOf(d) / (sdOf(d) / Math.sqrt(d.length)) : NaN;
  console.log(
    `| ${name} | ${pct(meanOf(x))} ± ${pct(sdOf(x))} | ${pct(meanOf(y))} ± ${pct(sdOf(y))} | ${d.map((v) => (v >= 0 ? '+' : '') + pct(v)).join(' ')} | ` +
      `${wins} / ${losses} / ${d.length - wins - losses} | ${pct(meanOf(d))} ± ${pct(sdOf(d))} | ${t.toFixed(2)} (${tTestP(t, d.length - 1).toFixed(3)}) | ${signTestP(wins, losses).toFixed(3)} |`,
  );
}
// A run's seeds are in OUT/seed-<s>; rank-results.mjs's merged results.json names each seed's folder in `runs`.
const seedDir = (s) => resolve(out, top.runs?.find((r) => r.seed === s)?.dir ?? `seed-${s}`);
const bytesOf = (id) =>
  seeds.map((s) => {
    const r = JSON.parse(readFileSync(join(seedDir(s), 'results.json'), 'utf8'));
    return r.models.find((m) => m.id === id).bytes;
  });
for (const id of [a, b]) {
  const bs = bytesOf(id);
  const up = meanOf(bs.map((x) => x.upPerRound));
  const down = meanOf(bs.map((x) => x.downPerRound));
  console.log(
    `${id}: bytes per round, every site together: up ${up.toFixed(0)} (${(up / 1024).toFixed(1)} KiB), down ${down.toFixed(0)} (${(down / 1024).toFixed(1)} KiB)`,
  );
}
