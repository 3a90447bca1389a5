import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rankRuns, maxDecline, stat, type RankInput } from '../experiment/ranking.js';
import type { ModelResult } from '../experiment/results.js';
import type { EvalMetrics } from '../shared/protocol/messages.js';

/**
 * The ranking and the goals on hand-made results: which recipe is best, the gaps to centralized,
 * local-only models on foreign defects, head-only against full and its round-to-round decline.
 */

const GOALS = { externalBalancedGap: 0.02, probeDefectRecallGap: 0.03, headVsFullGap: 0.08, headMaxDecline: 0.01 };

/**
 * Metrics with a given accuracy, balanced accuracy and recall of class 1 (the defect) out of 100
 * defect images, and the share of the 100 good images (class 0) called a defect.
 */
function metrics(acc: number, bal: number, defectRecall: number, falseAlarm = 0): EvalMetrics {
  const hit = Math.round(defectRecall * 100);
  const alarms = Math.round(falseAlarm * 100);
  return {
    accuracy: acc,
    balancedAccuracy: bal,
    loss: null,
    count: 200,
    precision: [1, 1],
    recall: [1, defectRecall],
    confusion: [
      [100 - alarms, alarms],
      [100 - hit, hit],
    ],
  } as unknown as EvalMetrics;
}

function model(
  id: string,
  o: {
    arm: ModelResult['arm'];
    federate?: 'all' | 'head';
    site?: string;
    ext: number;
    probe: number;
    foreign: number;
    falseAlarm?: number;
    curve?: number[];
  },
): ModelResult {
  const site = (a: number) => metrics(a, a, o.foreign, o.falseAlarm);
  const curve = o.curve ?? [0.5, 0.9];
  return {
    id,
    arm: o.arm,
    recipe: null,
    options: {},
    site: o.site ?? null,
    init: 'pretrained',
    federate: o.federate ?? 'all',
    rounds: curve.slice(0, -1).map((a, i) => ({
      round: i + 1,
      baseVersion: i,
      newVersion: i + 1,
      learningRate: 0.001,
      baseMetrics: { s1: site(a), s2: site(a) },
      localMetrics: {},
      sampleCounts: {},
      trainMs: {},
      bytesUp: 0,
      bytesDown: 0,
    })),
    roundsRun: curve.length - 1,
    epochsPerRound: 1,
    localSteps: null,
    reason: '',
    roundsToTarget: null,
    targetSites: o.site ? [o.site] : ['s1', 's2'],
    bytes: { upPerRound: 0, downPerRound: 0, total: 0, imagesMoved: 0 },
    msPerLocalEpoch: null,
    eval: {
      'local-test': metrics(0.9, 0.9, 0.9),
      'site:s1': site(curve.at(-1)!),
      'site:s2': site(curve.at(-1)!),
      external: metrics(o.ext, o.ext, 0.9),
      probes: metrics(0.9, 0.9, o.probe),
    },
    confusionPngs: {},
    modelDir: '',
  };
}

const sites = [
  { id: 's1', dir: '' },
  { id: 's2', dir: '' },
];

function run(seed: number, shift: number, fedForeign: number, headCurve: number[]): RankInput {
  return {
    seed,
    sites,
    probes: [],
    defectIndex: 1,
    models: [
      model('centralized', { arm: 'centralized', ext: 0.95 + shift, probe: 0.96, foreign: 0.95 }),
      model('local-only:s1', { arm: 'local-only', site: 's1', ext: 0.6, probe: 0.3, foreign: 0.4 }),
      model('recipe:b', { arm: 'federated-all', ext: 0.9 + shift, probe: 0.9, foreign: fedForeign }),
      model('recipe:a', { arm: 'federated-all', ext: 0.94 + shift, probe: 0.94, foreign: 0.8 }),
      model('recipe:h', { arm: 'federated-head', federate: 'head', ext: 0.88 + shift, probe: 0.8, foreign: 0.7, curve: headCurve }),
    ],
  };
}

test('stat: mean and sample standard deviation; maxDecline: the largest fall', () => {
  assert.deepEqual(stat([0.5]), { mean: 0.5, sd: 0, values: [0.5] });
  const s = stat([0.4, 0.6])!;
  assert.ok(Math.abs(s.mean - 0.5) < 1e-12 && Math.abs(s.sd - Math.sqrt(0.02)) < 1e-12);
  assert.equal(stat([0.4, null]), null, 'a seed without the figure: no mean');
  assert.ok(Math.abs(maxDecline([{ mean: 0.5 }, { mean: 0.8 }, { mean: 0.75 }, { mean: 0.9 }]) - 0.05) < 1e-12);
  assert.equal(maxDecline([{ mean: 0.5 }, { mean: 0.6 }]), 0);
});

test('ranking: best mean first, references after; the goals pass and fail on their figures', () => {
  // Prepare: recipe a beats b on both seeds; head climbs steadily in seed 1, falls 3 points in seed 2.
  const runs = [run(1, 0, 0.6, [0.6, 0.7, 0.8]), run(2, 0.02, 0.35, [0.6, 0.8, 0.77])];

  // Execute
  const r = rankRuns(runs, GOALS);

  // Assert: the order and the figures.
  assert.deepEqual(
    r.models.map((m) => [m.id, m.rank]),
    [
      ['recipe:a', 1],
      ['recipe:b', 2],
      ['recipe:h', 3],
      ['centralized', null],
      ['local-only:s1', null],
    ],
  );
  assert.ok(Math.abs(r.models[0]!.externalBalanced!.mean - 0.95) < 1e-12);
  const [gapBa, gapRecall, foreign, foreignJ, headGap, headDecline, headBoth] = r.goals;
  // centralized 0.96 mean vs a 0.95: 1 point, within 2.
  assert.equal(gapBa!.holds, true);
  assert.ok(Math.abs((gapBa!.figures.gap as number) - 0.01) < 1e-12);
  // probe recall 0.96 vs 0.94: 2 points, within 3.
  assert.equal(gapRecall!.holds, true);
  // seed 2: recipe b finds 35% of s1's foreign defects, local-only:s1 40%: fails, and says where.
  assert.equal(foreign!.holds, false);
  assert.match(foreign!.detail, /seed 2: recipe:b 35\.0% vs local-only:s1 40\.0%/);
  // Each model's own worst margin over the seeds, not only the closest pair's: a 80-40, b 35-40, h 70-40.
  assert.ok(Math.abs((foreign!.figures['margin:recipe:a'] as number) - 0.4) < 1e-9);
  assert.ok(Math.abs((foreign!.figures['margin:recipe:b'] as number) + 0.05) < 1e-9);
  assert.ok(Math.abs((foreign!.figures['margin:recipe:h'] as number) - 0.3) < 1e-9);
  assert.match(foreign!.detail, /each model's worst margin: recipe:a \+40\.0, recipe:b -5\.0, recipe:h \+30\.0 points;/);
  // No false alarms anywhere here: informedness is the recall, and that line fails on the same pair.
  assert.equal(foreignJ!.holds, false);
  assert.ok(Math.abs((foreignJ!.figures['jmargin:recipe:b'] as number) + 0.05) < 1e-9);
  // head 0.89 vs full 0.95: 6 points, within 8.
  assert.equal(headGap!.holds, true);
  // head falls 3 points in seed 2.
  assert.equal(headDecline!.holds, false);
  assert.ok(Math.abs((headDecline!.figures.maxDecline as number) - 0.03) < 1e-9);
  // The only head recipe swings: none meets both head goals.
  assert.equal(headBoth!.holds, false);

  // And with the federated models all above local-only, a steady head and a weak best recipe.
  const better = rankRuns([run(1, 0, 0.6, [0.6, 0.7, 0.8])], { ...GOALS, externalBalancedGap: 0.005 });
  assert.deepEqual(
    better.goals.map((g) => g.holds),
    [false, true, true, true, true, true, true],
  );
  assert.equal(better.goals[6]!.figures.recipes, 'recipe:h');
});

test('ranking: a slower head recipe that meets both head goals is named, while the best-scoring one swings', () => {
  // Prepare: recipe h scores 0.88 and falls 3 points in seed 2; recipe h2 scores 0.87 (8 points under
  // recipe a's 0.95 mean: within 8) and climbs in both seeds; h3 is steady but 10 points under.
  const withHeads = (seed: number, shift: number, curve: number[]): RankInput => {
    const r = run(seed, shift, 0.6, curve);
    return {
      ...r,
      models: [
        ...r.models,
        model('recipe:h2', { arm: 'federated-head', federate: 'head', ext: 0.87 + shift, probe: 0.7, foreign: 0.7, curve: [0.6, 0.65, 0.7] }),
        model('recipe:h3', { arm: 'federated-head', federate: 'head', ext: 0.85 + shift, probe: 0.7, foreign: 0.7, curve: [0.6, 0.65, 0.7] }),
      ],
    };
  };

  // Execute
  const r = rankRuns([withHeads(1, 0, [0.6, 0.7, 0.8]), withHeads(2, 0.02, [0.6, 0.8, 0.77])], GOALS);

  // Assert: the best head fails the decline goal; the joint line names h2 only.
  assert.equal(r.goals[5]!.holds, false);
  assert.equal(r.goals[5]!.figures.head, 'recipe:h');
  assert.equal(r.goals[6]!.holds, true);
  assert.equal(r.goals[6]!.figures.recipes, 'recipe:h2');
  assert.match(r.goals[6]!.detail, /recipe:h2 8\d\.\d%, largest fall 0\.0 points/);
});

test('ranking: goals that cannot be measured say n/a (null), not pass', () => {
  const only = run(1, 0, 0.6, [0.6, 0.7]);
  const r = rankRuns([{ ...only, models: only.models.filter((m) => m.id === 'recipe:a') }], GOALS);
  assert.deepEqual(
    r.goals.map((g) => g.holds),
    [null, null, null, null, null, null, null],
  );
});

test("ranking: a local model that calls every part a defect wins goal 3's recall line and loses its informedness line", () => {
  // Prepare: local-only:s1 calls every foreign image NOT_OKAY (recall 100 %, false alarms 100 %: J 0);
  // the federated recipes find 80-90 % of s1's foreign defects with 5-10 % false alarms.
  const runs = [1, 2].map((seed): RankInput => {
    const r = run(seed, 0, 0.6, [0.6, 0.7, 0.8]);
    const models = r.models.filter((m) => m.arm !== 'local-only' && m.id !== 'recipe:b');
    return {
      ...r,
      models: [
        ...models.map((m) => (m.id === 'recipe:a' ? model('recipe:a', { arm: 'federated-all', ext: 0.94, probe: 0.94, foreign: 0.9, falseAlarm: 0.1 }) : m)),
        model('local-only:s1', { arm: 'local-only', site: 's1', ext: 0.5, probe: 1, foreign: 1, falseAlarm: 1 }),
        model('recipe:c', { arm: 'federated-all', ext: 0.93, probe: 0.9, foreign: 0.8, falseAlarm: 0.05 }),
      ],
    };
  });

  // Execute
  const [, , recall, informed] = rankRuns(runs, GOALS).goals;

  // Assert: no recipe beats 100 % recall; every recipe beats J 0 (a: 0.9 - 0.1, c: 0.8 - 0.05, h: 0.7 - 0).
  assert.equal(recall!.holds, false);
  assert.ok(Math.abs((recall!.figures['margin:recipe:a'] as number) + 0.1) < 1e-9);
  assert.equal(recall!.figures['falseAlarm:local-only:s1'], 1);
  assert.ok(Math.abs((recall!.figures['falseAlarm:recipe:c'] as number) - 0.05) < 1e-9);
  assert.match(recall!.detail, /false alarms on the other sites' good parts [\d.]+% vs 100\.0%/);
  assert.equal(informed!.holds, true);
  assert.ok(Math.abs((informed!.figures['jmargin:recipe:a'] as number) - 0.8) < 1e-9);
  assert.ok(Math.abs((informed!.figures['jmargin:recipe:c'] as number) - 0.75) < 1e-9);
  assert.ok(Math.abs((informed!.figures['jmargin:recipe:h'] as number) - 0.7) < 1e-9);
  assert.match(
    informed!.detail,
    /closest: seed \d: recipe:h J 70\.0% \(recall 70\.0%, false alarms 0\.0%\) vs local-only:s1 J 0\.0% \(recall 100\.0%, false alarms 100\.0%\)/,
  );

  // And a local model with fewer false alarms than its recall gap: J still judges it above recipe h.
  const strict = runs.map((r) => ({
    ...r,
    models: r.models.map((m) =>
      m.arm === 'local-only' ? model('local-only:s1', { arm: 'local-only', site: 's1', ext: 0.5, probe: 1, foreign: 0.95, falseAlarm: 0.2 }) : m,
    ),
  }));
  const [, , , informedStrict] = rankRuns(strict, GOALS).goals;
  assert.equal(informedStrict!.holds, false);
  assert.ok(Math.abs((informedStrict!.figures['jmargin:recipe:h'] as number) + 0.05) < 1e-9);
});
