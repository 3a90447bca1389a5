import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  batchNormLayers,
  isBatchNormTensor,
  mergeMomentsInto,
  momentsFromMeanVariance,
  momentsOfValues,
  poolMoments,
  withPooledStatistics,
  type LayerMoments,
} from '../shared/fl/bn-statistics.js';
import { mulberry32 } from '../shared/util/random.js';

/** float64 reference: mean and biased variance per channel of channel-last values, two passes. */
function reference(values: readonly number[], channels: number): { mean: number[]; variance: number[] } {
  const n = values.length / channels;
  const mean = new Array<number>(channels).fill(0);
  values.forEach((v, i) => (mean[i % channels]! += v / n));
  const variance = new Array<number>(channels).fill(0);
  values.forEach((v, i) => (variance[i % channels]! += (v - mean[i % channels]!) ** 2 / n));
  return { mean, variance };
}

const close = (got: ArrayLike<number>, want: readonly number[], relTol: number, what: string) => {
  want.forEach((w, c) => assert.ok(Math.abs(got[c]! - w) <= relTol * Math.max(1, Math.abs(w)), `${what}[${c}]: ${got[c]} vs ${w}`));
};

test('pooled mean and variance of three non-IID sites equal those of the pooled raw data (float64 reference), not the averaged variance', () => {
  // Prepare: 4 channels; each site has its own offset per channel (non-IID) and its own size.
  const rng = mulberry32(11);
  const channels = 4;
  const sites = [
    { n: 37, offset: 5 },
    { n: 400, offset: -3 },
    { n: 9, offset: 40 },
  ].map(({ n, offset }) => Array.from({ length: n * channels }, (_, i) => offset * ((i % channels) + 1) + (rng() - 0.5) * 2));
  const moments = sites.map((values) => [momentsOfValues('bn1', values, channels)]);
  // Execute
  const pooled = poolMoments(moments).get('bn1')!;
  // Assert: exact up to float64 rounding against the pooled raw values.
  const ref = reference(sites.flat(), channels);
  assert.equal(pooled.count, 446);
  close(pooled.mean, ref.mean, 1e-12, 'mean');
  close(pooled.variance, ref.variance, 1e-12, 'variance');
  // And the FedAvg of the sites' variances misses the between-site term by far.
  const averaged = ref.variance.map((_, c) => sites.reduce((s, v) => s + (v.length / channels) * reference(v, channels).variance[c]!, 0) / 446);
  assert.ok(
    averaged.every((v, c) => v < ref.variance[c]! / 10),
    `averaged ${averaged} vs pooled ${ref.variance}`,
  );
});

test('large mean, small spread: batch-wise float32 moments combined in float64 keep the variance (no sum of squares)', () => {
  // Prepare: values 1e4 + N(0, 1e-2^2): E[x^2] - E[x]^2 in float32 would be pure rounding noise.
  const rng = mulberry32(3);
  const values = Array.from({ length: 6000 }, () => 1e4 + (rng() - 0.5) * 0.02);
  const ref = reference(values, 1);
  // Execute: 60 batches of 100, each summarised as tf.moments would (float32 mean and variance).
  const acc: LayerMoments = { layer: 'bn', count: 0, mean: new Float64Array(1), m2: new Float64Array(1) };
  for (let b = 0; b < 60; b++) {
    const r = reference(values.slice(b * 100, b * 100 + 100), 1);
    mergeMomentsInto(acc, momentsFromMeanVariance('bn', 100, Float32Array.from(r.mean), Float32Array.from(r.variance)));
  }
  // Assert: within float32 resolution of each batch's variance.
  close([acc.m2[0]! / acc.count], ref.variance, 1e-5, 'variance');
  close(acc.mean, ref.mean, 1e-7, 'mean');
});

test('pooling does not depend on how a site splits its data into batches', () => {
  const rng = mulberry32(5);
  const values = Array.from({ length: 3 * 500 }, () => rng() * 7 - 2);
  const whole = momentsOfValues('l', values, 3);
  const parts = [0, 90, 91, 300, 500].slice(1).map((end, i, ends) => momentsOfValues('l', values.slice((i === 0 ? 0 : ends[i - 1]!) * 3, end * 3), 3));
  const pooled = poolMoments([parts]).get('l')!;
  close(pooled.mean, [...whole.mean], 1e-12, 'mean');
  close(
    pooled.variance,
    [...whole.m2].map((m) => m / whole.count),
    1e-12,
    'variance',
  );
});

test('bad statistics are refused with the layer named; a layer with no values at all too', () => {
  const good = momentsOfValues('bn1', [1, 2, 3, 4], 2);
  assert.throws(() => poolMoments([[good], [{ ...good, m2: Float64Array.from([1, -1]) }]]), /layer bn1: channel 1/);
  assert.throws(() => poolMoments([[good], [{ ...good, mean: Float64Array.from([NaN, 0]) }]]), /layer bn1: channel 0/);
  assert.throws(() => poolMoments([[good], [momentsOfValues('bn1', [1, 2, 3], 3)]]), /layer bn1: 3 channels, expected 2/);
  assert.throws(() => poolMoments([[{ layer: 'bn2', count: 0, mean: new Float64Array(2), m2: new Float64Array(2) }]]), /bn2: no site reported/);
});

test('BN layers are found in a Sequential topology; the pooled statistics replace only moving mean and variance', () => {
  const topology = {
    class_name: 'Sequential',
    config: {
      name: 's',
      layers: [
        { class_name: 'Conv2D', config: { name: 'c1' } },
        { class_name: 'BatchNormalization', config: { name: 'c1_bn' } },
        { class_name: 'Dense', config: { name: 'head_d' } },
      ],
    },
  };
  assert.deepEqual(batchNormLayers(topology), ['c1_bn']);
  assert.ok(isBatchNormTensor('c1_bn/gamma', ['c1_bn']));
  assert.ok(!isBatchNormTensor('c1/kernel', ['c1_bn']));
  const t = (name: string, v: number[]) => ({ name, data: Float32Array.from(v) });
  const tensors = [t('c1/kernel', [1, 2]), t('c1_bn/gamma', [1, 1]), t('c1_bn/moving_mean', [0, 0]), t('c1_bn/moving_variance', [1, 1])];
  const pooled = poolMoments([[momentsOfValues('c1_bn', [1, 10, 3, 30], 2)]]);
  const out = withPooledStatistics(tensors, pooled);
  assert.deepEqual(
    out.map((x) => [...x.data]),
    [
      [1, 2],
      [1, 1],
      [2, 20],
      [1, 100],
    ],
  );
  assert.throws(() => withPooledStatistics(tensors.slice(0, 2), pooled), /no tensor c1_bn\/moving_mean/);
});
