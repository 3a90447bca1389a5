import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clipSampleClaims, DEFAULT_SAMPLE_CLAIM_RATIO, leaveOneOutMedians, sampleLimit, screenUpdateNorms } from '../aggregator/robustness.js';

test('norm screening: an outlier is refused against the median of the others (leave-one-out)', () => {
  const v = screenUpdateNorms(
    new Map([
      ['a', 1],
      ['b', 1.2],
      ['c', 0.9],
      ['evil', 40],
    ]),
    { maxNormRatio: 10, maxNorm: null, baseNorm: 10 },
  );
  assert.deepEqual(
    v.filter((x) => !x.accepted).map((x) => x.agent),
    ['evil'],
  );
  assert.equal(v.find((x) => x.agent === 'evil')!.referenceNorm, 1);
  // Two clients: the attacker cannot pull the reference up with its own norm.
  const two = screenUpdateNorms(
    new Map([
      ['a', 1],
      ['evil', 500],
    ]),
    { maxNormRatio: 10, maxNorm: null, baseNorm: 10 },
  );
  assert.deepEqual(
    two.map((x) => [x.agent, x.accepted]),
    [
      ['a', true],
      ['evil', false],
    ],
  );
});

test('norm screening: honest sites at different stages (one converged) are not refused, thanks to the floor', () => {
  // Measured in a 50-round run: 0.0099 vs 0.000064 (153x) while the model's norm is ~7.
  const v = screenUpdateNorms(
    new Map([
      ['site-a', 0.000064],
      ['site-b', 0.0099],
    ]),
    { maxNormRatio: 10, maxNorm: null, baseNorm: 7 },
  );
  assert.ok(v.every((x) => x.accepted));
  // The same federation, one site replaced by an attacker moving the model by twice its own norm.
  const attacked = screenUpdateNorms(
    new Map([
      ['site-a', 0.000064],
      ['site-b', 14],
    ]),
    { maxNormRatio: 10, maxNorm: null, baseNorm: 7 },
  );
  assert.deepEqual(
    attacked.filter((x) => !x.accepted).map((x) => x.agent),
    ['site-b'],
  );
});

test('norm screening: absolute limit, non-finite norms, single update, disabled', () => {
  assert.equal(screenUpdateNorms(new Map([['a', 5]]), { maxNormRatio: 10, maxNorm: 4, baseNorm: 10 })[0]!.accepted, false);
  assert.equal(
    screenUpdateNorms(
      new Map([
        ['a', Number.NaN],
        ['b', 1],
      ]),
      { maxNormRatio: 10, maxNorm: null, baseNorm: 10 },
    )[0]!.accepted,
    false,
  );
  assert.equal(
    screenUpdateNorms(new Map([['a', 1e9]]), { maxNormRatio: 10, maxNorm: null, baseNorm: 1 })[0]!.accepted,
    true,
    'nothing to compare one update with',
  );
  assert.ok(
    screenUpdateNorms(
      new Map([
        ['a', 1],
        ['b', 1e6],
      ]),
      { maxNormRatio: null, maxNorm: null, baseNorm: 1 },
    ).every((x) => x.accepted),
  );
});

test('sample limits: registered count with tolerance, global cap, both, neither', () => {
  const base = { maxSamplesPerAgent: null, registeredSamples: { a: 100 }, registeredTolerance: 0.1 };
  assert.equal(sampleLimit('a', base), 110);
  assert.equal(sampleLimit('b', base), null);
  assert.equal(sampleLimit('a', { ...base, maxSamplesPerAgent: 50 }), 50);
  assert.equal(sampleLimit('b', { ...base, maxSamplesPerAgent: 50 }), 50);
});

test('sample claims: clipped to ratio x the median claim of the others unless the site has a registered count', () => {
  // Prepare: three honest sites of ~100 images and a liar claiming a million; site-b is registered.
  const claims = new Map([
    ['site-a', 90],
    ['site-b', 120],
    ['site-c', 100],
    ['evil', 1_000_000],
  ]);

  // Execute
  const clips = clipSampleClaims(claims, { ratio: 3, registeredSamples: { 'site-b': 110 }, maxSamplesPerAgent: null });
  const off = clipSampleClaims(claims, { ratio: null, registeredSamples: {}, maxSamplesPerAgent: null });
  const alone = clipSampleClaims(new Map([['evil', 1_000_000]]), { ratio: 3, registeredSamples: {}, maxSamplesPerAgent: null });

  // Assert: the liar weighs 3 x median(90, 120, 100) = 300; honest claims stay within theirs (3 x 120 with the liar among the others).
  assert.deepEqual(
    clips.map((c) => [c.agent, c.used, c.limit, c.basis, c.clipped]),
    [
      ['evil', 300, 300, 'median', true],
      ['site-a', 90, 360, 'median', false],
      ['site-b', 120, null, 'registered', false],
      ['site-c', 100, 360, 'median', false],
    ],
  );
  assert.equal(DEFAULT_SAMPLE_CLAIM_RATIO, 3);
  assert.ok(off.every((c) => !c.clipped && c.used === c.claimed));
  assert.deepEqual(
    alone.map((c) => [c.used, c.clipped]),
    [[1_000_000, false]],
  );
});

test('leave-one-out medians from one sort equal the median of the others, value by value (ties, NaN, 1-301 values)', () => {
  const naive = (values: number[]): number[] =>
    values.map((_, i) => {
      const s = values.filter((_, k) => k !== i).sort((a, b) => (Number.isNaN(a) ? 1 : Number.isNaN(b) ? -1 : a - b));
      if (s.length === 0) return NaN;
      const m = s.length >> 1;
      return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
    });
  let seed = 7;
  const rand = (): number => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (const n of [1, 2, 3, 4, 5, 8, 17, 64, 301]) {
    for (let trial = 0; trial < 5; trial++) {
      // Few distinct values make ties; now and then a NaN or an infinity (a hostile site's norm).
      const values = Array.from({ length: n }, () => {
        const r = rand();
        return r < 0.03 ? NaN : r < 0.05 ? Infinity : Math.floor(rand() * (trial + 2)) * 0.37;
      });
      assert.deepEqual(leaveOneOutMedians(values), naive(values), `n=${n} trial ${trial}: ${values.join(',')}`);
    }
  }
});
