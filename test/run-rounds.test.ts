import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RunRounds } from '../edge-agent/run-rounds.js';

test('rounds are keyed by (runId, round); an earlier run announced before the newest one followed is stale', () => {
  // Prepare: round 1 of run A finished.
  const rounds = new RunRounds();
  assert.equal(rounds.isEarlierRun({ runId: 'run-a', issuedAt: 1000 }), false);
  rounds.finish({ runId: 'run-a', round: 1 });

  // Execute / Assert: round 1 of a new run B is another round; A's messages issued before B's are stale.
  assert.equal(rounds.isFinished({ runId: 'run-a', round: 1 }), true);
  assert.equal(rounds.isFinished({ runId: 'run-b', round: 1 }), false);
  assert.equal(rounds.isEarlierRun({ runId: 'run-b', issuedAt: 5000 }), false);
  assert.equal(rounds.isEarlierRun({ runId: 'run-a', issuedAt: 1200 }), true, "run A's retained closed/complete, issued before run B's announcement");
  assert.equal(rounds.isEarlierRun({ runId: 'run-b', issuedAt: 4000 }), false, 'an older announcement of the run followed is not another run');
  assert.equal(rounds.isEarlierRun({ runId: 'run-c', issuedAt: 9000 }), false, 'a newer run is followed');
  assert.equal(rounds.isEarlierRun({ runId: 'run-b', issuedAt: 6000 }), true);
});
