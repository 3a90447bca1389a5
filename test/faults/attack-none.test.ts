import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertReleasedWithinGate, describeResult, HONEST, MAX_DROP, runAttack, STRATEGIES } from '../support/attack-scenario.js';

/**
 * The baseline of the attack tests (test/support/attack-scenario.ts): the same three honest sites
 * and rounds with no attacker, so that the table of docs/reliability.md shows what round 3 does to
 * the honest sites' accuracy by itself under each strategy.
 */
for (const strategy of STRATEGIES) {
  test(`no attacker (baseline) with ${strategy}`, { timeout: 180_000 }, async () => {
    // Prepare + Execute
    const r = await runAttack('none', strategy);
    console.log(describeResult(r));

    // Assert: only the honest sites took part, and their round does not cost them more than the bound.
    assert.deepEqual(r.participants, HONEST);
    assert.deepEqual(r.alerts, []);
    assert.ok(r.maxDrop <= MAX_DROP, describeResult(r));
    // The released model (default release policy: auto, maxRegression 0.02): on no honest site does it lose more
    // balanced accuracy than the regression gate, whatever the candidate did.
    assertReleasedWithinGate(r);
  });
}
