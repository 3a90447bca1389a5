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

/**
 * False-alarm rate pooled over several confusion matrices: the share of the images whose true class
 * is not `defect` (good parts, and any other non-defect class) that the model called `defect`; null
 * when none of them has such an image. The other side of a defect recall: a model that calls every
 * image a defect has recall 1 and false-alarm rate 1.
 */
export function pooledFalseAlarm(metrics: readonly EvalMetrics[], defect: number): number | null {
  let alarms = 0;
  let total = 0;
  for (const m of metrics)
    m.confusion.forEach((row, cls) => {
      if (cls === defect) return;
      alarms += row[defect] ?? 0;
      total += row.reduce((s, v) => s + v, 0);
    });
  return total > 0 ? alarms / total : null;
}

/** A model on one site's foreign sets (foreignDefectSets): defect recall, false-alarm rate, and informedness = recall - false alarms. */
export interface ForeignDetection {
  recall: number | null;
  falseAlarm: number | null;
  /**
   * Youden's J of the defect-vs-rest test on those images. Recall alone is won by calling everything
   * a defect (recall 1, J 0); J counts the false alarms a site would pay for that recall. null when
   * either side has no images.
   */
  informedness: number | null;
}

/**
 * How a model does on a site's foreign sets: recall on their defect images, false alarms on their
 * other images (the other sites' test splits' good parts; the generated probes hold defects only).
 */
export function foreignDetection(model: ModelResult, site: string, sites: readonly Site[], probes: readonly Probe[], defect: number): ForeignDetection {
  const metrics = foreignDefectSets(site, sites, probes)
    .map((s) => model.eval[s])
    .filter((m): m is EvalMetrics => m !== undefined);
  const recall = pooledRecall(metrics, defect);
  const falseAlarm = pooledFalseAlarm(metrics, defect);
  return { recall, falseAlarm, informedness: recall === null || falseAlarm === null ? null : recall - falseAlarm };
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
      const mine = foreignDetection(l, l.site!, sites, probes, defectIndex);
      const theirs = foreignDetection(fed, l.site!, sites, probes, defectIndex);
      return { site: l.site!, local: mine, fed: theirs, wins: mine.recall !== null && theirs.recall !== null && theirs.recall > mine.recall };
    });
    // The recall alone is the paper's claim; the false alarms on the same sets' good parts follow it,
    // since a local model that calls most foreign parts defective wins on recall (ranking.ts, goal 3).
    const side = (d: ForeignDetection) => `${pct(d.recall)} (false alarms ${pct(d.falseAlarm)})`;
    out.push({
      claim:
        "federated beats every local-only model on other clients' defects (defect recall on the other sites' test splits and the probes with a foreign defect; in brackets the false-alarm rate on the other sites' good parts)",
      holds: parts.every((p) => p.wins),
      detail: parts.map((p) => `${p.site}'s foreign defects: federated-all ${side(p.fed)} vs local-only:${p.site} ${side(p.local)}`).join('; '),
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
