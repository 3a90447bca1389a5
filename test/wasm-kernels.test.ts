import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mulberry32 } from '../shared/util/random.js';
import { startCpuBackend, startWasmBackend, type Tf } from '../training/backend.js';
import { buildModel } from '../training/models.js';

/**
 * fedline's WebAssembly training kernels (training/wasm-kernels.ts) against the pure-JS `cpu`
 * backend: the same gradients, relative error <= 1e-5 (max |wasm - cpu| / max |cpu|).
 */

const rand = (n: number, seed: number) => {
  const rng = mulberry32(seed);
  return Float32Array.from({ length: n }, () => rng() * 2 - 1);
};

type Case = { b: number; h: number; w: number; ci: number; co: number; fh: number; fw: number; stride: number; pad: 'same' | 'valid' };

const CONV_CASES: Case[] = [
  { b: 2, h: 8, w: 8, ci: 3, co: 4, fh: 3, fw: 3, stride: 1, pad: 'same' },
  { b: 2, h: 7, w: 9, ci: 3, co: 5, fh: 3, fw: 3, stride: 2, pad: 'same' },
  { b: 3, h: 9, w: 7, ci: 2, co: 4, fh: 3, fw: 3, stride: 3, pad: 'valid' },
  { b: 2, h: 10, w: 11, ci: 4, co: 3, fh: 3, fw: 3, stride: 3, pad: 'valid' }, // leaves input rows/columns unused
  { b: 1, h: 6, w: 6, ci: 2, co: 2, fh: 2, fw: 2, stride: 2, pad: 'valid' },
  { b: 2, h: 5, w: 6, ci: 3, co: 3, fh: 5, fw: 5, stride: 1, pad: 'valid' },
  { b: 2, h: 12, w: 12, ci: 8, co: 16, fh: 1, fw: 1, stride: 1, pad: 'same' },
  { b: 2, h: 11, w: 10, ci: 3, co: 4, fh: 4, fw: 4, stride: 2, pad: 'same' }, // even filter, asymmetric same padding
  { b: 4, h: 16, w: 16, ci: 16, co: 32, fh: 3, fw: 3, stride: 1, pad: 'same' },
  { b: 2, h: 9, w: 9, ci: 5, co: 6, fh: 3, fw: 3, stride: 3, pad: 'same' },
  { b: 3, h: 6, w: 7, ci: 2, co: 3, fh: 3, fw: 2, stride: 1, pad: 'valid' }, // non-square filter
  { b: 30, h: 64, w: 64, ci: 16, co: 4, fh: 3, fw: 3, stride: 1, pad: 'same' }, // large: the gradient is split into several GEMMs
];

type Grads = { dx: Float32Array; dw: Float32Array };

function convGrads(tf: Tf, c: Case, depthwise: boolean): Grads {
  const filterShape: [number, number, number, number] = [c.fh, c.fw, c.ci, depthwise ? c.co : c.co];
  return tf.tidy(() => {
    const x = tf.tensor4d(rand(c.b * c.h * c.w * c.ci, c.h * 100 + c.w), [c.b, c.h, c.w, c.ci]);
    const f = tf.tensor4d(
      rand(
        filterShape.reduce((a, v) => a * v, 1),
        c.fh * 7 + c.co,
      ),
      filterShape,
    );
    const forward = (xx: import('@tensorflow/tfjs').Tensor4D, ff: import('@tensorflow/tfjs').Tensor4D) =>
      depthwise ? tf.depthwiseConv2d(xx, ff, c.stride, c.pad) : tf.conv2d(xx, ff, c.stride, c.pad);
    const outShape = forward(x, f).shape;
    // A fixed random upstream gradient: loss = sum(conv(x, f) * r), so dL/dy = r.
    const r = tf.tensor(
      rand(
        outShape.reduce((a, v) => a * v, 1),
        99,
      ),
      outShape,
    );
    const [dx, dw] = tf.grads((xx, ff) => tf.sum(tf.mul(forward(xx as never, ff as never), r)))([x, f]);
    return { dx: dx!.dataSync() as Float32Array, dw: dw!.dataSync() as Float32Array };
  });
}

function relativeError(got: Float32Array, want: Float32Array): number {
  assert.equal(got.length, want.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs(got[i]! - want[i]!));
    scale = Math.max(scale, Math.abs(want[i]!));
  }
  return diff / Math.max(scale, 1e-30);
}

async function both(run: (tf: Tf) => Grads[]): Promise<{ cpu: Grads[]; wasm: Grads[] }> {
  const tf = (await import('@tensorflow/tfjs')) as Tf;
  tf.env().set('PROD', true);
  await startCpuBackend(tf);
  const cpu = run(tf);
  const started = await startWasmBackend(tf);
  assert.ok(started.ok, started.ok ? '' : started.reason);
  const wasm = run(tf);
  return { cpu, wasm };
}

const label = (c: Case) => `${c.b}x${c.h}x${c.w}x${c.ci} f${c.fh}x${c.fw}->${c.co} s${c.stride} ${c.pad}`;

test('wasm Conv2DBackpropFilter and Conv2DBackpropInput match the cpu backend (rel. error <= 1e-5): strides 1/2/3, same/valid, odd/even sizes', async () => {
  const { cpu, wasm } = await both((tf) => CONV_CASES.map((c) => convGrads(tf, c, false)));
  CONV_CASES.forEach((c, i) => {
    const ew = relativeError(wasm[i]!.dw, cpu[i]!.dw);
    const ex = relativeError(wasm[i]!.dx, cpu[i]!.dx);
    assert.ok(ew <= 1e-5, `filter gradient ${label(c)}: relative error ${ew}`);
    assert.ok(ex <= 1e-5, `input gradient ${label(c)}: relative error ${ex}`);
  });
});

const DEPTHWISE_CASES: Case[] = [
  { b: 2, h: 8, w: 8, ci: 3, co: 1, fh: 3, fw: 3, stride: 1, pad: 'same' },
  { b: 2, h: 7, w: 9, ci: 4, co: 2, fh: 3, fw: 3, stride: 2, pad: 'same' },
  { b: 3, h: 9, w: 7, ci: 2, co: 3, fh: 3, fw: 3, stride: 3, pad: 'valid' },
  { b: 2, h: 10, w: 11, ci: 3, co: 1, fh: 3, fw: 3, stride: 3, pad: 'valid' },
  { b: 2, h: 6, w: 6, ci: 5, co: 1, fh: 2, fw: 2, stride: 2, pad: 'valid' },
  { b: 2, h: 11, w: 10, ci: 3, co: 2, fh: 4, fw: 4, stride: 2, pad: 'same' },
];

test('wasm depthwise convolution gradients (filter and input) match the cpu backend (rel. error <= 1e-5)', async () => {
  // For depthwise, `co` is the channel multiplier.
  const { cpu, wasm } = await both((tf) => DEPTHWISE_CASES.map((c) => convGrads(tf, c, true)));
  DEPTHWISE_CASES.forEach((c, i) => {
    const ew = relativeError(wasm[i]!.dw, cpu[i]!.dw);
    const ex = relativeError(wasm[i]!.dx, cpu[i]!.dx);
    assert.ok(ew <= 1e-5, `depthwise filter gradient ${label(c)}: relative error ${ew}`);
    assert.ok(ex <= 1e-5, `depthwise input gradient ${label(c)}: relative error ${ex}`);
  });
});

test('wasm MaxPoolGrad, Sum over leading axes and 2-D MatMul with transposes match the cpu backend', async () => {
  const run = (tf: Tf): Grads[] =>
    tf.tidy(() => {
      const out: Grads[] = [];
      // Max-pool gradients: 2x2/2 on even sizes (the fast path), odd sizes, 3x3/2 same; ReLU'd input has many ties at 0.
      for (const [h, w, size, stride, pad] of [
        [8, 8, 2, 2, 'valid'],
        [9, 7, 2, 2, 'valid'],
        [9, 9, 3, 2, 'same'],
        [6, 10, 2, 1, 'same'],
      ] as const) {
        const x = tf.relu(tf.tensor4d(rand(2 * h * w * 3, h + w), [2, h, w, 3]));
        const y = tf.maxPool(x, size, stride, pad);
        const r = tf.tensor(rand(y.size, 7), y.shape);
        const dx = tf.grad((xx) => tf.sum(tf.mul(tf.maxPool(xx as import('@tensorflow/tfjs').Tensor4D, size, stride, pad), r)))(x);
        out.push({ dx: dx.dataSync() as Float32Array, dw: new Float32Array(0) });
      }
      const t = tf.tensor4d(rand(3 * 5 * 4 * 6, 3), [3, 5, 4, 6]);
      for (const axis of [[0], [0, 1], [0, 1, 2], [1, 2], [3], [0, 2]]) {
        out.push({ dx: tf.sum(t, axis).dataSync() as Float32Array, dw: tf.sum(t, axis, true).dataSync() as Float32Array });
      }
      const a = tf.tensor2d(rand(7 * 5, 11), [7, 5]);
      for (const [b, ta, tb] of [
        [tf.tensor2d(rand(5 * 3, 12), [5, 3]), false, false],
        [tf.tensor2d(rand(7 * 3, 13), [7, 3]), true, false],
        [tf.tensor2d(rand(3 * 5, 14), [3, 5]), false, true],
        [tf.tensor2d(rand(3 * 7, 15), [3, 7]), true, true],
      ] as const) {
        out.push({ dx: tf.matMul(a, b, ta, tb).dataSync() as Float32Array, dw: new Float32Array(0) });
      }
      return out;
    });
  const { cpu, wasm } = await both(run);
  cpu.forEach((want, i) => {
    assert.ok(relativeError(wasm[i]!.dx, want.dx) <= 1e-5, `case ${i}: relative error ${relativeError(wasm[i]!.dx, want.dx)}`);
    assert.ok(relativeError(wasm[i]!.dw, want.dw) <= 1e-5, `case ${i} (keepDims)`);
  });
});

test('wasm training: tensor count, tfjs bytes and the WebAssembly heap stay flat over 100 steps', async () => {
  const tf = (await import('@tensorflow/tfjs')) as Tf;
  const started = await startWasmBackend(tf);
  assert.ok(started.ok);
  const backend = tf.backend() as unknown as { wasm: { HEAPU8: Uint8Array }; numDataIds(): number };
  const heapBytes = () => backend.wasm.HEAPU8.byteLength;
  const model = buildModel(tf, { architecture: 'small-cnn', inputShape: [16, 16, 3], numClasses: 4, seed: 3 });
  const optimizer = tf.train.adam(0.001);
  const vars = model.trainableWeights.map((w) => (w as unknown as { val: import('@tensorflow/tfjs').Variable }).val);
  const x = tf.tensor4d(rand(8 * 16 * 16 * 3, 1), [8, 16, 16, 3]);
  const y = tf.oneHot(tf.tensor1d([0, 1, 2, 3, 0, 1, 2, 3], 'int32'), 4);
  const step = () =>
    tf.tidy(() => {
      const loss = optimizer.minimize(
        () => tf.losses.softmaxCrossEntropy(y, model.apply(x, { training: true }) as import('@tensorflow/tfjs').Tensor2D) as import('@tensorflow/tfjs').Scalar,
        true,
        vars,
      );
      return loss!.dataSync()[0]!;
    });
  const losses: number[] = [];
  for (let i = 0; i < 10; i++) losses.push(step());
  const after10 = { ...tf.memory(), heap: heapBytes(), buffers: backend.numDataIds() };
  for (let i = 10; i < 100; i++) losses.push(step());
  const after100 = { ...tf.memory(), heap: heapBytes(), buffers: backend.numDataIds() };
  assert.equal(after100.numTensors, after10.numTensors, 'tensor count');
  assert.equal(after100.numBytes, after10.numBytes, 'tfjs bytes');
  // Kernel temporaries live outside tfjs' tensor count: the backend's own buffer count catches a leaked one.
  assert.equal(after100.buffers, after10.buffers, 'buffers on the WebAssembly heap');
  assert.equal(after100.heap, after10.heap, 'WebAssembly heap size');
  assert.ok(losses.every(Number.isFinite));
  assert.ok(losses.at(-1)! < losses[0]! * 0.7, `the model learns: loss ${losses[0]} -> ${losses.at(-1)}`);
  model.dispose();
  optimizer.dispose();
});
