import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RoundState, type AcceptedUpdate, type RoundPlan } from '../aggregator/round-state.js';
import { classificationMetrics } from '../shared/fl/classification-metrics.js';

const plan = (over: Partial<RoundPlan> = {}): RoundPlan => ({
  round: 1,
  kind: 'train',
  baseVersion: 0,
  selected: ['b', 'a', 'c'],
  minClients: 2,
  deadlineAt: 1000,
  startedAt: 0,
  targetAccuracy: null,
  ...over,
});
const update = (agent: string): AcceptedUpdate => ({ agent, sampleCount: 10, bytes: 100, sha256: 'x', metricsBefore: null, metricsAfter: null, trainMs: 1 });
const metrics = (accuracy: number) => ({ ...classificationMetrics([0, 1], [0, 1], 2), accuracy });

test('a round waits until every selected agent answered, then aggregates', () => {
  const s = new RoundState(plan());
  assert.deepEqual(s.plan.selected, ['a', 'b', 'c']);
  s.recordAccepted(update('a'));
  s.recordAccepted(update('b'));
  assert.deepEqual(s.decide(10), { close: false });
  s.recordFailure({ agent: 'c', code: 'FL_UPDATE_NONFINITE', reason: 'NaN' });
  const d = s.decide(10);
  assert.ok(d.close && d.outcome === 'aggregate');
  assert.deepEqual(
    s.failureList().map((f) => f.agent),
    ['c'],
  );
});

test('at the deadline: aggregate with >= minClients, otherwise keep the global model', () => {
  const enough = new RoundState(plan());
  enough.recordAccepted(update('a'));
  enough.recordAccepted(update('c'));
  assert.deepEqual(enough.decide(999), { close: false });
  const d1 = enough.decide(1000);
  assert.ok(d1.close && d1.outcome === 'aggregate');

  const few = new RoundState(plan());
  few.recordAccepted(update('a'));
  const d2 = few.decide(1000);
  assert.ok(d2.close && d2.outcome === 'keep' && /1 of 3 updates accepted, 2 needed/.test(d2.reason));
});

test("target accuracy on every agent closes a training round early (the paper's stopping rule)", () => {
  const s = new RoundState(plan({ targetAccuracy: 0.9 }));
  s.recordEval('a', metrics(0.95));
  s.recordEval('b', metrics(0.91));
  assert.deepEqual(s.decide(0), { close: false });
  s.recordEval('c', metrics(0.89));
  assert.deepEqual(s.decide(0), { close: false }, 'one agent below target: keep training');
  const t = new RoundState(plan({ targetAccuracy: 0.9 }));
  for (const a of ['a', 'b', 'c']) t.recordEval(a, metrics(0.93));
  const d = t.decide(0);
  assert.ok(d.close && d.outcome === 'target-reached');
});

test('evaluation rounds close when every selected agent reported, or at the deadline', () => {
  const s = new RoundState(plan({ kind: 'evaluate' }));
  s.recordEval('a', metrics(0.5));
  assert.equal(s.recordEval('a', metrics(0.6)), false, 'a second report does not replace the first');
  assert.deepEqual(s.decide(0), { close: false });
  const late = s.decide(1000);
  assert.ok(late.close && late.outcome === 'evaluated');
  s.recordEval('b', metrics(0.5));
  s.recordEval('c', metrics(0.5));
  const d = new RoundState(plan({ kind: 'evaluate' }));
  for (const a of ['a', 'b', 'c']) d.recordEval(a, metrics(0.5));
  assert.ok(d.decide(0).close);
});

test('an update is accepted once; a later valid update clears an earlier failure', () => {
  const s = new RoundState(plan());
  s.recordFailure({ agent: 'a', code: 'X', reason: 'bad' });
  s.recordAccepted(update('a'));
  assert.deepEqual(s.failureList(), []);
  assert.throws(() => s.recordAccepted(update('a')), /accepted twice/);
  s.recordFailure({ agent: 'a', code: 'Y', reason: 'late garbage' });
  assert.deepEqual(s.failureList(), [], 'a failure after acceptance does not undo it');
  assert.throws(() => new RoundState(plan({ selected: [] })), /no agent selected/);
});

test('decide() asks the target rule again only after a new evaluation, and with every evaluation so far', () => {
  const seen: string[][] = [];
  const s = new RoundState(plan({ targetAccuracy: 0.9 }), (m, selected, target) => {
    seen.push(Object.keys(m).sort());
    return selected.every((a) => (m[a]?.accuracy ?? 0) >= target!);
  });
  assert.deepEqual(s.decide(10), { close: false });
  s.recordAccepted(update('a'));
  s.recordFailure({ agent: 'b', code: 'FL_UPDATE_NONFINITE', reason: 'NaN' });
  assert.deepEqual(s.decide(10), { close: false });
  assert.deepEqual(s.decide(11), { close: false });
  assert.deepEqual(seen, [[]], 'events other than evaluations do not re-run the rule');
  assert.ok(s.recordEval('a', metrics(0.95)));
  assert.ok(s.recordEval('b', metrics(0.95)));
  assert.ok(!s.recordEval('b', metrics(0.1)), 'a second report of an agent is ignored');
  assert.deepEqual(s.decide(12), { close: false });
  assert.deepEqual(seen, [[], ['a', 'b']]);
  assert.ok(s.recordEval('c', metrics(0.91)));
  const d = s.decide(13);
  assert.ok(d.close && d.outcome === 'target-reached');
  assert.deepEqual(seen, [[], ['a', 'b'], ['a', 'b', 'c']]);
});

test('agents that were not selected neither count as selected nor as answers', () => {
  const s = new RoundState(plan({ minClients: 1 }));
  assert.ok(s.isSelected('a') && !s.isSelected('z'));
  s.recordFailure({ agent: 'z', code: 'FL_NOT_SELECTED', reason: 'not selected' });
  s.recordAccepted(update('a'));
  s.recordAccepted(update('b'));
  assert.deepEqual(s.decide(10), { close: false }, 'c has not answered; z does not stand in for it');
  s.recordFailure({ agent: 'c', code: 'FL_UPDATE_NONFINITE', reason: 'NaN' });
  const d = s.decide(10);
  assert.ok(d.close && d.outcome === 'aggregate');
});
