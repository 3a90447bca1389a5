import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertReleasedWithinGate, ATTACKER, describeResult, isBounded, MAX_DROP, runAttack, STRATEGIES } from '../support/attack-scenario.js';

/**
 * Three honest sites and one attacker with a legitimate login: a free rider sending back the global model.
 * For every strategy, the honest sites' accuracy on the attack round's candidate, against the model
 * before it (test/support/attack-scenario.ts). `npm run bench:attacks` turns these runs into the
 * table of docs/reliability.md.
 */
for (const strategy of STRATEGIES) {
  test(`a free rider sending back the global model against ${strategy}`, { timeout: 180_000 }, async () => {
    // Prepare + Execute: two honest rounds, the attack in round 3, an evaluation round.
    const r = await runAttack('free-rider', strategy);
    console.log(describeResult(r));

    // Assert
    assert.ok(r.participants.includes(ATTACKER), 'the free rider took part');
    if (isBounded('free-rider', strategy)) {
      assert.ok(r.maxDrop <= MAX_DROP, `an honest site lost ${r.maxDrop.toFixed(3)} accuracy (bound ${MAX_DROP}): ${describeResult(r)}`);
    }
    // The released model (default release policy: auto, maxRegression 0.02): on no honest site does it lose more
    // balanced accuracy than the regression gate, whatever the candidate did.
    assertReleasedWithinGate(r);
  });
}
