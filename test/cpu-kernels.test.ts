import { test } from 'node:test';
import assert from 'node:assert/strict';
import { conv2dBackpropFilterNhwc, maxPoolGradNhwc } from '../training/cpu-kernels.js';
import { loadTf } from '../training/backend.js';
import { mulberry32 } from '../shared/util/random.js';

const rand = (n: number, seed: number) => {
  const rng = mulberry32(seed);
  return Float32Array.from({ length: n }, () => rng() * 2 - 1);
};

/** Direct float64 evaluation of the definition, as an independent reference. */
function referenceFilterGrad(
  x: Float32Array,
  dy: Float32Array,
  [b, h, w, ci]: number[],
  [fh, fw, co]: number[],
  [oh, ow]: number[],
  [sh, sw]: number[],
  [pt, pl]: number[],
) {
  const out = new Float64Array(fh * fw * ci * co);
  for (let kh = 0; kh < fh; kh++)
    for (let kw = 0; kw < fw; kw++)
      for (let c = 0; c < ci; c++)
        for (let o = 0; o < co; o++) {
          let s = 0;
          for (let n = 0; n < b!; n++)
            for (let y = 0; y < oh!; y++)
              for (let z = 0; z < ow!; z++) {
                const iy = y * sh! + kh - pt!;
                const iz = z * sw! + kw - pl!;
                if (iy < 0 || iy >= h! || iz < 0 || iz >= w!) continue;
                s += x[((n * h! + iy) * w! + iz) * ci! + c]! * dy[((n * oh! + y) * ow! + z) * co + o]!;
              }
          out[((kh * fw + kw) * ci! + c) * co + o] = s;
        }
  return out;
}

test('fast Conv2DBackpropFilter matches the definition (rel. error <= 1e-5) for strides 1/2/3, same/valid, odd/even sizes', () => {
  for (const [h, w, stride, pad, fh] of [
    [8, 8, 1, 'same', 3],
    [7, 9, 2, 'same', 3],
    [9, 7, 3, 'valid', 3],
    [6, 6, 2, 'valid', 2],
    [5, 5, 1, 'valid', 5],
  ] as const) {
    const b = 2,
      ci = 3,
      co = 4,
      fw = fh;
    const oh = pad === 'same' ? Math.ceil(h / stride) : Math.ceil((h - fh + 1) / stride);
    const ow = pad === 'same' ? Math.ceil(w / stride) : Math.ceil((w - fw + 1) / stride);
    const pt = pad === 'same' ? Math.floor(Math.max((oh - 1) * stride + fh - h, 0) / 2) : 0;
    const pl = pad === 'same' ? Math.floor(Math.max((ow - 1) * stride + fw - w, 0) / 2) : 0;
    const x = rand(b * h * w * ci, h * 31 + w);
    const dy = rand(b * oh * ow * co, stride);
    const got = conv2dBackpropFilterNhwc(x, dy, {
      batchSize: b,
      inHeight: h,
      inWidth: w,
      inChannels: ci,
      outHeight: oh,
      outWidth: ow,
      outChannels: co,
      filterHeight: fh,
      filterWidth: fw,
      strideHeight: stride,
      strideWidth: stride,
      padTop: pt,
      padLeft: pl,
    });
    const ref = referenceFilterGrad(x, dy, [b, h, w, ci], [fh, fw, co], [oh, ow], [stride, stride], [pt, pl]);
    let maxRel = 0;
    for (let i = 0; i < ref.length; i++) maxRel = Math.max(maxRel, Math.abs(got[i]! - ref[i]!) / Math.max(1e-3, Math.abs(ref[i]!)));
    assert.ok(maxRel <= 1e-5, `h${h} w${w} s${stride} ${pad}: max relative error ${maxRel}`);
  }
});

test('the installed kernels give the same gradients as tf.grad through tfjs (conv and max-pool)', async () => {
  const { tf } = await loadTf('cpu');
  const x = tf.tensor4d(rand(2 * 9 * 9 * 3, 5), [2, 9, 9, 3]);
  const f = tf.tensor4d(rand(3 * 3 * 3 * 4, 6), [3, 3, 3, 4]);
  for (const [stride, pad] of [
    [1, 'same'],
    [2, 'valid'],
    [3, 'same'],
  ] as const) {
    const loss = (ff: import('@tensorflow/tfjs').Tensor4D) => tf.sum(tf.square(tf.maxPool(tf.relu(tf.conv2d(x, ff, stride, pad)), 2, 2, 'same')));
    const grad = tf.grad(loss as never)(f) as import('@tensorflow/tfjs').Tensor;
    // Finite differences on a few filter entries: an independent check of the whole backward pass.
    const fv = f.dataSync();
    const gv = grad.dataSync();
    for (const i of [0, 17, 50, 107]) {
      const eps = 1e-2;
      const plus = Float32Array.from(fv);
      plus[i]! += eps;
      const minus = Float32Array.from(fv);
      minus[i]! -= eps;
      const lp = loss(tf.tensor4d(plus, [3, 3, 3, 4])).dataSync()[0]!;
      const lm = loss(tf.tensor4d(minus, [3, 3, 3, 4])).dataSync()[0]!;
      const numeric = (lp - lm) / (2 * eps);
      assert.ok(
        Math.abs(numeric - gv[i]!) <= 2e-2 * Math.max(1, Math.abs(numeric)),
        `stride ${stride} ${pad} entry ${i}: analytic ${gv[i]} numeric ${numeric}`,
      );
    }
  }
});

test('max-pool gradient goes to the first maximum of each window', () => {
  // One 2x2 window with a tie (two 5s): tfjs' rule is the first in row-major order.
  const x = Float32Array.from([5, 1, 5, 2]);
  const dx = maxPoolGradNhwc(x, Float32Array.from([3]), {
    batchSize: 1,
    inHeight: 2,
    inWidth: 2,
    channels: 1,
    outHeight: 1,
    outWidth: 1,
    filterHeight: 2,
    filterWidth: 2,
    strideHeight: 2,
    strideWidth: 2,
    padTop: 0,
    padLeft: 0,
  });
  assert.deepEqual([...dx], [3, 0, 0, 0]);
});

test('the 2x2 max-pool gradient fast path (with the forward output) equals the general one, ties included', () => {
  const info = {
    batchSize: 2,
    inHeight: 6,
    inWidth: 8,
    channels: 3,
    outHeight: 3,
    outWidth: 4,
    filterHeight: 2,
    filterWidth: 2,
    strideHeight: 2,
    strideWidth: 2,
    padTop: 0,
    padLeft: 0,
  };
  // ReLU-like input: about half zeros, so many windows tie.
  const x = rand(2 * 6 * 8 * 3, 21).map((v) => Math.max(0, v));
  const dy = rand(2 * 3 * 4 * 3, 22);
  const pooled = new Float32Array(dy.length);
  for (let b = 0, o = 0; b < 2; b++)
    for (let oh = 0; oh < 3; oh++)
      for (let ow = 0; ow < 4; ow++)
        for (let c = 0; c < 3; c++, o++) {
          const at = (h: number, w: number) => x[((b * 6 + h) * 8 + w) * 3 + c]!;
          pooled[o] = Math.max(at(2 * oh, 2 * ow), at(2 * oh, 2 * ow + 1), at(2 * oh + 1, 2 * ow), at(2 * oh + 1, 2 * ow + 1));
        }
  assert.deepEqual(maxPoolGradNhwc(x, dy, info, undefined, pooled), maxPoolGradNhwc(x, dy, info));
  assert.ok(x.filter((v) => v === 0).length > 100, 'the input has ties');
});
