import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findings, foreignDetection, pooledFalseAlarm } from '../experiment/findings.js';
import type { ModelResult } from '../experiment/results.js';
import type { EvalMetrics } from '../shared/protocol/messages.js';

/**
 * The per-seed findings on foreign defects: defect recall on the other sites' sets, and the false
 * alarms on their good parts next to it (a model calling every image a defect has recall 100 %).
 */

/** Classes OKAY (0), NOT_OKAY (1), HIDDEN (2): a confusion matrix from its rows. */
const m = (confusion: number[][]) => ({ confusion }) as unknown as EvalMetrics;

test('pooledFalseAlarm: every non-defect image called the defect, pooled; null without one', () => {
  const a = m([
    [8, 2, 0],
    [1, 9, 0],
    [0, 1, 4],
  ]);
  const b = m([
    [5, 5, 0],
    [0, 3, 0],
    [0, 0, 0],
  ]);
  // (2 + 1 + 5) alarms out of (10 + 5 + 10) non-defect images.
  assert.ok(Math.abs(pooledFalseAlarm([a, b], 1)! - 8 / 25) < 1e-12);
  assert.equal(
    pooledFalseAlarm(
      [
        m([
          [0, 0],
          [2, 3],
        ]),
      ],
      1,
    ),
    null,
    'defect images only',
  );
});

function model(id: string, arm: ModelResult['arm'], site: string | null, perSite: Record<string, EvalMetrics>): ModelResult {
  return { id, arm, site, eval: Object.fromEntries(Object.entries(perSite).map(([s, e]) => [`site:${s}`, e])) } as unknown as ModelResult;
}

test("findings: federated beats every local-only model on other clients' defects, the false alarms shown beside the recall", () => {
  // Prepare: local-only:s1 calls every image of s2 NOT_OKAY; federated-all finds 8 of 10 defects with 1 of 10 false alarms.
  const all = m([
    [0, 10],
    [0, 10],
  ]);
  const fed = m([
    [9, 1],
    [2, 8],
  ]);
  const sites = [
    { id: 's1', dir: '' },
    { id: 's2', dir: '' },
  ];
  const models = [model('local-only:s1', 'local-only', 's1', { s2: all }), model('federated-all', 'federated-all', null, { s2: fed })];

  // Execute
  const local = foreignDetection(models[0]!, 's1', sites, [], 1);
  const found = findings(models, sites, [], 1).find((f) => f.claim.startsWith('federated beats every local-only'))!;

  // Assert: the literal claim fails on recall (80 % vs 100 %), and the detail shows why it is hollow.
  assert.deepEqual(local, { recall: 1, falseAlarm: 1, informedness: 0 });
  assert.equal(found.holds, false);
  assert.equal(found.detail, "s1's foreign defects: federated-all 80.0% (false alarms 10.0%) vs local-only:s1 100.0% (false alarms 100.0%)");
});
