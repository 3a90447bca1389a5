import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes } from '../../shared/protocol/errors.js';
import { mulberry32 } from '../../shared/util/random.js';
import type { NamedTensor } from '../../shared/bundle/tensor-bundle.js';
import { assertFedAvgResult, captureUpdates } from '../federation-checks.js';
import { startAedes, startFederation, tempDir, waitFor } from '../helpers.js';
import { startRogueAgent, type Forgery } from '../support/rogue-agent.js';

/** A poisoned update per round from site-c, a member of the federation; site-a and site-b are honest. */
const attacks: Record<number, { forge: Forgery; code: string; reason: RegExp }> = {
  // Round 1: a model replacement attack, the base pushed 1000x further than any honest update goes.
  1: {
    forge: (base) => {
      const rng = mulberry32(1);
      return { tensors: base.map((t) => ({ ...t, data: t.data.map((v) => v + (rng() - 0.5) * 20) })), sampleCount: 30 };
    },
    code: ErrorCodes.UPDATE_NORM,
    reason: /x the reference change .* \(the median of the other updates/,
  },
  // Round 2: an honest-looking update that claims a billion images, to outweigh everyone in FedAvg.
  2: {
    forge: (base) => ({ tensors: base, sampleCount: 1_000_000_000 }),
    code: ErrorCodes.UPDATE_SAMPLES,
    reason: /claims 1000000000 training samples; at most 44/,
  },
  // Round 3: tensors of the wrong shape.
  3: {
    forge: (base) => ({ tensors: base.map((t, i): NamedTensor => (i === 0 ? { ...t, shape: [t.data.length], data: t.data } : t)), sampleCount: 30 }),
    code: ErrorCodes.UPDATE_MANIFEST,
    reason: /the global model has float32\[3, 3, 3, 8\]/,
  },
};

test(
  'poisoned updates (absurd norm, inflated sample count, wrong shapes) are refused with the reason in an event; the honest average is unaffected',
  { timeout: 180_000 },
  async () => {
    const dir = tempDir('fault-poison');
    const broker = await startAedes();
    const observer = await captureUpdates(broker.url);
    const rogue = await startRogueAgent(broker.url, 'site-c', (base, ann) => attacks[ann.round]?.forge(base, ann) ?? null);
    const fed = await startFederation({
      url: broker.url,
      dir: dir.path,
      agents: ['site-a', 'site-b'],
      extraMembers: ['site-c'],
      rounds: 3,
      minClients: 2,
      waitForAgentsMs: 1000,
      aggregator: { registeredSamples: { 'site-c': 40 }, evaluateFinalModel: false } as never,
    });
    const alerts: Record<string, unknown>[] = [];
    fed.aggregator.aggregator.on('event', (e: Record<string, unknown>) => {
      if (e.type === 'alert') alerts.push(e);
    });
    try {
      const result = await fed.aggregator.aggregator.run();
      await waitFor('the rogue to get its verdicts', () => rogue.acks.length >= 2, 10_000);
      assert.deepEqual(rogue.errors, []);
      for (const round of [1, 2, 3]) {
        const r = result.rounds.find((x) => x.round === round)!;
        const attack = attacks[round]!;
        assert.equal(r.outcome, 'aggregate', `round ${round}`);
        assert.deepEqual(r.participants, ['site-a', 'site-b'], `round ${round}: only the honest updates were averaged`);
        assert.deepEqual(
          r.failures.map((f) => [f.agent, f.code]),
          [['site-c', attack.code]],
          `round ${round}`,
        );
        assert.match(r.failures[0]!.reason, attack.reason);
        const alert = alerts.find((a) => a.round === round && a.code === attack.code && a.agent === 'site-c');
        assert.ok(alert, `round ${round}: an alert event names the refusal`);
        assert.match(String(alert.message), attack.reason);
        await assertFedAvgResult(
          fed.aggregator.store,
          r.newVersion!,
          ['site-a', 'site-b'].map((a) => observer.updates.get(`${round}/${a}`)!),
          [],
        );
      }
      // Refusals at arrival were acked as such; the norm screening happens at the round's close.
      assert.deepEqual(rogue.acks.map((a) => [a.round, a.status, a.code]).sort(), [
        [1, 'accepted', null],
        [2, 'rejected', ErrorCodes.UPDATE_SAMPLES],
        [3, 'rejected', ErrorCodes.UPDATE_MANIFEST],
      ]);
    } finally {
      await fed.stop();
      await rogue.close();
      await observer.close();
      await broker.close();
      dir.cleanup();
    }
  },
);
