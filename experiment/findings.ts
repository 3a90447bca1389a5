import type { EvalMetrics } from '../shared/protocol/messages.js';
import type { Finding, ModelResult, Probe, Site } from './results.js';

/** Recall of one class pooled over several confusion matrices (null when none of them has that class). */
export function pooledRecall(metrics: readonly EvalMetrics[], cls: number): number | null {
  let hit = 0;
  let total = 0;
  for (const m of metrics) {
    const row = m.confusion[cls];
    if (!row) continue;
    hit += row[cls] ?? 0;
    total += row.reduce((s, v) => s + v, 0);
  }
  return total > 0 ? hit / total : null;
}

/** "Other clients' defects" for a site: the defect images of the other sites' test splits and the probes whose defect is not this site's own. */
export function foreignDefectSets(site: string, sites: readonly Site[], probes: readonly Probe[]): string[] {
  return [
    ...sites.filter((s) => s.id !== site).map((s) => `site:${s.id}`),
    ...probes.filter((p) => p.defectOf !== null && p.defectOf !== site).map((p) => `probe:${p.id}`),
  ];
}

/** The paper's qualitative findings, checked on these results. */
export function findings(models: readonly ModelResult[], sites: readonly Site[], probes: readonly Probe[], defectIndex: number): Finding[] {
  const by = (id: string) => models.find((m) => m.id === id);
  const out: Finding[] = [];
  const fed = by('federated-all');
  const central = by('centralized');
  const pct = (x: number | null | undefined) => (x === null || x === undefined ? '-' : `${(100 * x).toFixed(1)}%`);
  if (fed && central) {
    const a = fed.eval['local-test']!.accuracy;
    const b = central.eval['local-test']!.accuracy;
    out.push({
      claim: 'federated (full fine-tune) is close to centralized on the local test splits (within 5 points)',
      holds: Math.abs(a - b) <= 0.05,
      detail: `federated-all ${pct(a)}, centralized ${pct(b)}`,
    });
  }
  const locals = models.filter((m) => m.arm === 'local-only');
  if (fed && locals.length > 0 && defectIndex >= 0) {
    const parts = locals.map((l) => {
      const sets = foreignDefectSets(l.site!, sites, probes);
      const mine = pooledRecall(sets.map((s) => l.eval[s]!).filter(Boolean), defectIndex);
      const theirs = pooledRecall(sets.map((s) => fed.eval[s]!).filter(Boolean), defectIndex);
      return { site: l.site!, local: mine, fed: theirs, wins: mine !== null && theirs !== null && theirs > mine };
    });
    out.push({
      claim:
        "federated beats every local-only model on other clients' defects (defect recall on the other sites' test splits and the probes with a foreign defect)",
      holds: parts.every((p) => p.wins),
      detail: parts.map((p) => `${p.site}'s foreign defects: federated-all ${pct(p.fed)} vs local-only:${p.site} ${pct(p.local)}`).join('; '),
    });
  }
  const head = by('federated-head');
  if (fed && head && fed.eval.external && head.eval.external) {
    const a = fed.eval.external.accuracy;
    const b = head.eval.external.accuracy;
    out.push({
      claim: 'full fine-tune beats head-only on the external set',
      holds: a > b,
      detail: `federated-all ${pct(a)}, federated-head ${pct(b)} (balanced ${pct(fed.eval.external.balancedAccuracy)} vs ${pct(head.eval.external.balancedAccuracy)})`,
    });
  }
  const random = by('federated-random');
  if (fed && random) {
    out.push({
      claim: 'a random common init learns far more slowly than a pretrained one (the paper: no progress before ~20 rounds)',
      holds: random.eval['local-test']!.accuracy < fed.eval['local-test']!.accuracy - 0.05,
      detail: `after ${random.roundsRun} rounds: federated-random ${pct(random.eval['local-test']!.accuracy)} vs federated-all ${pct(fed.eval['local-test']!.accuracy)}; rounds to target ${random.roundsToTarget ?? 'not reached'} vs ${fed.roundsToTarget ?? 'not reached'}`,
    });
  }
  return out;
}
