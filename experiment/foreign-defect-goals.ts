import { foreignDetection, type ForeignDetection } from './findings.js';
import type { ModelResult } from './results.js';
import type { GoalCheck, RankedModel, RankInput } from './ranking.js';

/**
 * Goal 3 (issue 11): every federated recipe above every local-only model on that site's foreign
 * defects (the other sites' test splits and the probes with another site's defect, pooled), on
 * every seed. Two lines: the issue's own, on defect recall alone, and the same comparison with the
 * false alarms counted. Recall alone is won by a model that calls every image a defect (recall 100 %);
 * a local model trained on one product often calls the others' good parts defective, and a site
 * would stop the line for each of those. Informedness (Youden's J = recall - false-alarm rate on
 * the same images) is 0 for that model, 1 for a perfect one, and needs no threshold tuned to a data set.
 */

/** One federated model against one site's local-only model on that site's foreign sets, one seed. */
interface Pair {
  seed: number;
  site: string;
  fedId: string;
  fed: ForeignDetection;
  localId: string;
  local: ForeignDetection;
}

const pct = (x: number | null | undefined) => (x === null || x === undefined ? '-' : `${(100 * x).toFixed(1)}%`);
const pts = (x: number) => `${(100 * x).toFixed(1)} points`;
const signed = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(1)}`;

function pairsOf(judged: readonly RankedModel[], runs: readonly RankInput[]): Pair[] {
  const pairs: Pair[] = [];
  for (const run of runs) {
    if (run.defectIndex < 0) continue;
    const of = (m: ModelResult, site: string) => foreignDetection(m, site, run.sites, run.probes, run.defectIndex);
    for (const local of run.models.filter((m) => m.arm === 'local-only' && m.site !== null)) {
      for (const f of judged) {
        const fm = run.models.find((m) => m.id === f.id);
        if (fm) pairs.push({ seed: run.seed, site: local.site!, fedId: f.id, fed: of(fm, local.site!), localId: local.id, local: of(local, local.site!) });
      }
    }
  }
  return pairs;
}

/** Each model's false-alarm rate on its foreign good parts, mean over the seeds (federated: and over the sites). */
function falseAlarmFigures(pairs: readonly Pair[]): Record<string, number> {
  const seen = new Map<string, Map<string, number>>();
  const add = (id: string, key: string, x: number | null) => {
    if (x === null) return;
    if (!seen.has(id)) seen.set(id, new Map());
    seen.get(id)!.set(key, x);
  };
  // The local-only models first (they are the bar), then the federated ones.
  for (const p of pairs) add(p.localId, `${p.seed}`, p.local.falseAlarm);
  for (const p of pairs) add(p.fedId, `${p.seed}|${p.site}`, p.fed.falseAlarm);
  return Object.fromEntries([...seen].map(([id, xs]) => [`falseAlarm:${id}`, [...xs.values()].reduce((a, b) => a + b, 0) / xs.size]));
}

/** The closest pair over all models and each federated model's own worst margin on one figure of ForeignDetection. */
function worstMargins(pairs: readonly Pair[], value: (d: ForeignDetection) => number | null) {
  let worst: (Pair & { margin: number }) | null = null;
  const worstOf = new Map<string, number>();
  for (const p of pairs) {
    const mine = value(p.local);
    const theirs = value(p.fed);
    if (mine === null || theirs === null) continue;
    const margin = theirs - mine;
    worstOf.set(p.fedId, Math.min(worstOf.get(p.fedId) ?? Infinity, margin));
    if (worst === null || margin < worst.margin) worst = { ...p, margin };
  }
  return { worst, worstOf };
}

const NEEDS = 'needs local-only models, a federated arm and a defect class';

/**
 * The line: defect recall alone. It names the closest pair over all models, then each
 * model's own worst margin (figures `margin:<id>`: the closest pair alone hides how far the other
 * recipes are from passing), then the false alarms behind those recalls (figures `falseAlarm:<id>`).
 */
function recallGoal(pairs: readonly Pair[]): GoalCheck {
  const { worst, worstOf } = worstMargins(pairs, (d) => d.recall);
  const fa = falseAlarmFigures(pairs);
  const where =
    worst && `seed ${worst.seed}: ${worst.fedId} ${pct(worst.fed.recall)} vs ${worst.localId} ${pct(worst.local.recall)} on ${worst.site}'s foreign defects`;
  const each = [...worstOf].map(([id, m]) => `${id} ${signed(m)}`).join(', ');
  const alarms = Object.entries(fa)
    .map(([k, x]) => `${k.slice('falseAlarm:'.length)} ${pct(x)}`)
    .join(', ');
  return {
    goal: "every federated recipe above every local-only model on other sites' defects (each seed)",
    holds: worst === null ? null : worst.margin > 0,
    detail:
      worst === null
        ? NEEDS
        : `closest: ${where} (margin ${pts(worst.margin)}; false alarms on the other sites' good parts ${pct(worst.fed.falseAlarm)} vs ${pct(worst.local.falseAlarm)}); each model's worst margin: ${each} points; false alarms on the foreign good parts (mean over seeds and sites): ${alarms}`,
    figures: { worstMargin: worst?.margin ?? null, worst: where ?? null, ...Object.fromEntries([...worstOf].map(([id, m]) => [`margin:${id}`, m])), ...fa },
  };
}

/** The same comparison judged by informedness (figures `jmargin:<id>`: each model's worst margin, a fraction). */
function informednessGoal(pairs: readonly Pair[]): GoalCheck {
  const { worst, worstOf } = worstMargins(pairs, (d) => d.informedness);
  const side = (id: string, d: ForeignDetection) => `${id} J ${pct(d.informedness)} (recall ${pct(d.recall)}, false alarms ${pct(d.falseAlarm)})`;
  const where = worst && `seed ${worst.seed}: ${side(worst.fedId, worst.fed)} vs ${side(worst.localId, worst.local)} on ${worst.site}'s foreign sets`;
  const each = [...worstOf].map(([id, m]) => `${id} ${signed(m)}`).join(', ');
  return {
    goal: "every federated recipe above every local-only model on other sites' defects, false alarms counted (informedness: defect recall minus false-alarm rate on the other sites' good parts, each seed)",
    holds: worst === null ? null : worst.margin > 0,
    detail:
      worst === null
        ? `${NEEDS}, with good parts in the other sites' test splits`
        : `closest: ${where} (margin ${pts(worst.margin)}); each model's worst margin: ${each} points`,
    figures: { worstMargin: worst?.margin ?? null, worst: where ?? null, ...Object.fromEntries([...worstOf].map(([id, m]) => [`jmargin:${id}`, m])) },
  };
}

/** Goal 3's two lines: recall alone (the issue's wording), then informedness. */
export function foreignDefectGoals(judged: readonly RankedModel[], runs: readonly RankInput[]): GoalCheck[] {
  const pairs = pairsOf(judged, runs);
  return [recallGoal(pairs), informednessGoal(pairs)];
}
