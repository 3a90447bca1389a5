import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertReleasedWithinGate, ATTACKER, describeResult, isBounded, MAX_DROP, runAttack, STRATEGIES } from '../support/attack-scenario.js';

/**
 * Three honest sites and one attacker with a legitimate login: random direction (9x the last step, 1e6 samples claimed).
 * For every strategy, the honest sites' accuracy on the attack round's candidate, against the model
 * before it (test/support/attack-scenario.ts). `npm run bench:attacks` turns these runs into the
 * table of docs/reliability.md.
 */
for (const strategy of STRATEGIES) {
  test(`random direction (9x the last step, 1e6 samples claimed) against ${strategy}`, { timeout: 180_000 }, async () => {
    // Prepare + Execute: two honest rounds, the attack in round 3, an evaluation round.
    const r = await runAttack('random-direction', strategy);
    console.log(describeResult(r));

    // Assert
    // Refused by the norm screen, or kept with its claim clipped: never averaged at full weight unnoticed.
    assert.ok(
      r.alerts.some((a) => a === `FL_SAMPLES_CLIPPED:${ATTACKER}` || a === `FL_UPDATE_NORM:${ATTACKER}`),
      'the attack raised an alert',
    );
    if (isBounded('random-direction', strategy)) {
      assert.ok(r.maxDrop <= MAX_DROP, `an honest site lost ${r.maxDrop.toFixed(3)} accuracy (bound ${MAX_DROP}): ${describeResult(r)}`);
    }
    // The released model (default release policy: auto, maxRegression 0.02): on no honest site does it lose more
    // balanced accuracy than the regression gate, whatever the candidate did.
    assertReleasedWithinGate(r);
  });
}
