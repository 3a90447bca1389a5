import type { EvalMetrics } from '../shared/protocol/messages.js';
import type { Goals } from './config.js';
import { foreignDefectGoals } from './foreign-defect-goals.js';
import type { ExperimentResults, ModelResult, Probe, Site } from './results.js';

/**
 * The federated models ranked over one or more seeds, and the goals checked on them.
 * Works on ModelResult alone (id, federate, init, options, eval, rounds): a new strategy or arm
 * option is one more recipe here, with no change to this file.
 *
 * Which models: every federated model (the fixed federated arms and the recipes) is ranked;
 * centralized, centralized-head and the local-only models are listed as references. The goals judge the federated
 * models from the pretrained base only: federated-random is the paper's control for a common
 * start, not a recipe anyone would deploy.
 */

/** One seed's models and what the defect columns need. */
export interface RankInput {
  seed: number;
  models: ModelResult[];
  sites: readonly Site[];
  probes: readonly Probe[];
  /** Index of the defect class, -1: none. */
  defectIndex: number;
}

/** A figure over the seeds: mean, sample standard deviation (0 with one seed) and each seed's value. */
export interface Stat {
  mean: number;
  sd: number;
  values: number[];
}

export interface RankedModel {
  id: string;
  /** federated (ranked), centralized, centralized-head (the head alone on the pooled images) or local-only (references). */
  kind: 'federated' | 'centralized' | 'centralized-head' | 'local-only';
  recipe: string | null;
  federate: 'all' | 'head';
  init: 'pretrained' | 'random';
  options: ModelResult['options'];
  /** 1 = best; null for the references. */
  rank: number | null;
  /** The ranking figure: balanced accuracy on the external set (or, without one, on the local test splits pooled). */
  score: Stat | null;
  externalBalanced: Stat | null;
  localBalanced: Stat | null;
  /** Defect recall on every cross-client probe pooled. */
  probeDefectRecall: Stat | null;
  /** The lowest accuracy over the sites' local test splits, of the final model. */
  minSiteAccuracy: Stat | null;
  /** Mean over the seeds of the mean site accuracy after each round (round 0: the initial model). */
  curve: { round: number; mean: number }[];
  /** The largest fall of the mean site accuracy from one round to the next, worst seed (0: never fell). */
  maxDecline: number | null;
}

export interface GoalCheck {
  goal: string;
  /** null: not measurable here (an arm or set missing). */
  holds: boolean | null;
  detail: string;
  figures: Record<string, number | string | null>;
}

export interface Ranking {
  seeds: number[];
  scoreName: string;
  models: RankedModel[];
  goals: GoalCheck[];
}

/**
 * The rank inputs of several single-seed results: one per seed, the models of runs with the same
 * seed merged (e.g. recipes run in separate processes on the same config and seed; a model id
 * twice for one seed is refused).
 */
export function rankInputsOf(results: readonly ExperimentResults[]): RankInput[] {
  const bySeed = new Map<number, RankInput>();
  for (const r of results) {
    const seed = r.config.seed;
    const have = bySeed.get(seed);
    if (have) {
      const twice = r.models.find((m) => have.models.some((x) => x.id === m.id));
      if (twice) throw new Error(`seed ${seed}: model ${twice.id} in two results`);
      have.models = [...have.models, ...r.models];
      continue;
    }
    bySeed.set(seed, {
      seed,
      models: r.models,
      sites: Object.entries(r.data.sites).map(([id, s]) => ({ id, dir: s.dir })),
      probes: Object.entries(r.data.probes).map(([id, p]) => ({ id, dir: p.dir, product: p.product, defectOf: p.defectOf })),
      defectIndex: r.defectClass === null ? -1 : r.classes.indexOf(r.defectClass),
    });
  }
  return [...bySeed.values()];
}

const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export function stat(values: readonly (number | null | undefined)[]): Stat | null {
  const xs = values.filter((x): x is number => typeof x === 'number' && !Number.isNaN(x));
  if (xs.length === 0 || xs.length < values.length) return null;
  const m = mean(xs);
  const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1)) : 0;
  return { mean: m, sd, values: xs };
}

/** The model after round k (k = 0: the initial model), on each site it is judged on: from the next round's evaluation, or the final one. */
export function curve(m: ModelResult): { round: number; mean: number; min: number }[] {
  const points: { round: number; mean: number; min: number }[] = [];
  const summarize = (round: number, metrics: Record<string, EvalMetrics | undefined>) => {
    const accs = m.targetSites.map((s) => metrics[s]?.accuracy).filter((a): a is number => a !== undefined);
    if (accs.length) points.push({ round, mean: accs.reduce((a, b) => a + b, 0) / accs.length, min: Math.min(...accs) });
  };
  m.rounds.forEach((r) => summarize(r.round - 1, r.baseMetrics));
  const last = m.rounds.at(-1);
  if (last && last.newVersion !== null) summarize(last.round, Object.fromEntries(m.targetSites.map((s) => [s, m.eval[`site:${s}`]])));
  return points;
}

/** The largest fall from one point of a curve to the next (0 when it never falls). */
export function maxDecline(points: readonly { mean: number }[]): number {
  let worst = 0;
  for (let i = 1; i < points.length; i++) worst = Math.max(worst, points[i - 1]!.mean - points[i]!.mean);
  return worst;
}

const kindOf = (m: ModelResult): RankedModel['kind'] =>
  m.arm === 'centralized' || m.arm === 'centralized-head' || m.arm === 'local-only' ? m.arm : 'federated';

function rankedModel(id: string, runs: readonly RankInput[], useExternal: boolean): RankedModel {
  const per = runs.map((r) => ({ run: r, m: r.models.find((x) => x.id === id) }));
  const first = per.find((p) => p.m)!.m!;
  const of = (f: (m: ModelResult, r: RankInput) => number | null | undefined) => stat(per.map(({ m, run }) => (m ? f(m, run) : null)));
  const externalBalanced = of((m) => m.eval.external?.balancedAccuracy);
  const localBalanced = of((m) => m.eval['local-test']?.balancedAccuracy);
  const curves = per.filter((p) => p.m).map((p) => curve(p.m!));
  const rounds = Math.max(0, ...curves.map((c) => c.length));
  const meanCurve = Array.from({ length: rounds }, (_, k) => ({ round: k, mean: mean(curves.map((c) => c[k]?.mean ?? NaN)) })).filter(
    (p) => !Number.isNaN(p.mean),
  );
  return {
    id,
    kind: kindOf(first),
    recipe: first.recipe,
    federate: first.federate,
    init: first.init,
    options: first.options,
    rank: null,
    score: useExternal ? externalBalanced : localBalanced,
    externalBalanced,
    localBalanced,
    probeDefectRecall: of((m, r) => (r.defectIndex >= 0 && m.eval.probes ? (m.eval.probes.recall[r.defectIndex] ?? null) : null)),
    minSiteAccuracy: of((m, r) => {
      const accs = (m.site === null ? r.sites.map((s) => s.id) : [m.site]).map((s) => m.eval[`site:${s}`]?.accuracy);
      return accs.every((a) => a !== undefined) ? Math.min(...(accs as number[])) : null;
    }),
    curve: meanCurve,
    maxDecline: curves.length && curves.every((c) => c.length > 1) ? Math.max(...curves.map(maxDecline)) : null,
  };
}

/** Rank every federated model by its mean score over the seeds (ties: probe defect recall, then id) and check the goals. */
export function rankRuns(runs: readonly RankInput[], goals: Goals): Ranking {
  const useExternal = runs.every((r) => r.models.some((m) => m.eval.external));
  const ids = [...new Set(runs.flatMap((r) => r.models.map((m) => m.id)))];
  const all = ids.map((id) => rankedModel(id, runs, useExternal));
  const federated = all
    .filter((m) => m.kind === 'federated')
    .sort(
      (a, b) =>
        (b.score?.mean ?? -1) - (a.score?.mean ?? -1) ||
        (b.probeDefectRecall?.mean ?? -1) - (a.probeDefectRecall?.mean ?? -1) ||
        (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
    );
  federated.forEach((m, i) => (m.rank = i + 1));
  const models = [...federated, ...all.filter((m) => m.kind !== 'federated')];
  const scoreName = useExternal ? 'external balanced accuracy' : 'balanced accuracy on the local test splits pooled (no external set)';
  return { seeds: runs.map((r) => r.seed), scoreName, models, goals: checkGoals(models, runs, goals, scoreName) };
}

const pct = (x: number | null | undefined) => (x === null || x === undefined ? '-' : `${(100 * x).toFixed(1)}%`);
const pts = (x: number) => `${(100 * x).toFixed(1)} points`;

/** The goals, each a pass/fail line with its figures (goal 3 also with the false alarms counted; the two head goals also jointly, per recipe). */
function checkGoals(models: readonly RankedModel[], runs: readonly RankInput[], g: Goals, scoreName: string): GoalCheck[] {
  const judged = models.filter((m) => m.kind === 'federated' && m.init === 'pretrained' && m.score);
  const central = models.find((m) => m.kind === 'centralized');
  const best = judged[0];
  const out: GoalCheck[] = [];
  const scoreGap = best && central?.score ? central.score.mean - best.score!.mean : null;
  out.push({
    goal: `the best federated recipe within ${pts(g.externalBalancedGap)} of centralized on ${scoreName}`,
    holds: scoreGap === null ? null : scoreGap <= g.externalBalancedGap,
    detail: best && central ? `${best.id} ${pct(best.score!.mean)}, centralized ${pct(central.score?.mean)}` : 'needs centralized and a federated arm',
    figures: { best: best?.id ?? null, bestScore: best?.score?.mean ?? null, centralized: central?.score?.mean ?? null, gap: scoreGap },
  });
  const recallGap = best?.probeDefectRecall && central?.probeDefectRecall ? central.probeDefectRecall.mean - best.probeDefectRecall.mean : null;
  out.push({
    goal: `the best federated recipe within ${pts(g.probeDefectRecallGap)} of centralized on probe defect recall`,
    holds: recallGap === null ? null : recallGap <= g.probeDefectRecallGap,
    detail:
      recallGap === null
        ? 'needs centralized, a federated arm, probes and a defect class'
        : `${best!.id} ${pct(best!.probeDefectRecall!.mean)}, centralized ${pct(central!.probeDefectRecall!.mean)}`,
    figures: {
      best: best?.id ?? null,
      bestRecall: best?.probeDefectRecall?.mean ?? null,
      centralized: central?.probeDefectRecall?.mean ?? null,
      gap: recallGap,
    },
  });
  out.push(...foreignDefectGoals(judged, runs));
  out.push(
    ...headGoals(
      judged,
      g,
      models.find((m) => m.kind === 'centralized-head'),
    ),
  );
  return out;
}

/**
 * Head-only: within the gap of full fine-tuning, and never falling more than the allowed decline
 * from round to round. With the centralized-head reference the first line also says how far a head
 * on the same frozen base gets from the pooled images: what the frozen features allow, whatever
 * the federation does.
 */
function headGoals(judged: readonly RankedModel[], g: Goals, pooledHead: RankedModel | undefined): GoalCheck[] {
  const head = judged.find((m) => m.federate === 'head');
  const full = judged.find((m) => m.federate === 'all');
  const gap = head && full ? full.score!.mean - head.score!.mean : null;
  const pooled = pooledHead?.score ? `; the head on the pooled images (centralized-head) ${pct(pooledHead.score.mean)}` : '';
  return [
    {
      goal: `the best head-only recipe within ${pts(g.headVsFullGap)} of the best full fine-tuning`,
      holds: gap === null ? null : gap <= g.headVsFullGap,
      detail: head && full ? `${head.id} ${pct(head.score!.mean)}, ${full.id} ${pct(full.score!.mean)}${pooled}` : 'needs a head-only and a full federated arm',
      figures: {
        head: head?.id ?? null,
        headScore: head?.score?.mean ?? null,
        full: full?.id ?? null,
        fullScore: full?.score?.mean ?? null,
        gap,
        pooledHeadScore: pooledHead?.score?.mean ?? null,
      },
    },
    {
      goal: `the best head-only recipe never declines by more than ${pts(g.headMaxDecline)} from one round to the next (mean site accuracy, every seed)`,
      holds: head?.maxDecline === null || head === undefined ? null : head.maxDecline <= g.headMaxDecline,
      detail: head ? `${head.id}: largest fall ${head.maxDecline === null ? '-' : pts(head.maxDecline)}` : 'needs a head-only federated arm',
      figures: { head: head?.id ?? null, maxDecline: head?.maxDecline ?? null },
    },
    bothHeadGoals(judged, full, g),
  ];
}

/**
 * The two head goals met by one recipe: the lines above judge the head recipe with the best score,
 * which may swing while a slower one meets both; this line names every head recipe that does.
 */
function bothHeadGoals(judged: readonly RankedModel[], full: RankedModel | undefined, g: Goals): GoalCheck {
  const heads = judged.filter((m) => m.federate === 'head');
  const goal = `some head-only recipe meets both: within ${pts(g.headVsFullGap)} of the best full fine-tuning and never declining by more than ${pts(g.headMaxDecline)}`;
  if (!full || heads.length === 0) return { goal, holds: null, detail: 'needs a head-only and a full federated arm', figures: { recipes: null } };
  const both = heads.filter((m) => full.score!.mean - m.score!.mean <= g.headVsFullGap && m.maxDecline !== null && m.maxDecline <= g.headMaxDecline);
  return {
    goal,
    holds: both.length > 0,
    detail: both.length
      ? both.map((m) => `${m.id} ${pct(m.score!.mean)}, largest fall ${pts(m.maxDecline!)}`).join('; ')
      : `none of ${heads.length} head-only recipe(s)`,
    // Comma-separated ids (figures are scalars); null when none.
    figures: { recipes: both.length ? both.map((m) => m.id).join(', ') : null },
  };
}
