import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeQ8, encodeF16, encodeQ8 } from '../shared/bundle/value-encodings.js';
import { encodeBundle, layoutTensors } from '../shared/bundle/tensor-bundle.js';

/**
 * Hand-computed vectors for the bit-exact rules of docs/protocol.md (Update encodings, Tensor
 * bundle), so that the text and shared/bundle/ cannot drift apart.
 */

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

test('f16: nearest, ties to even, subnormals kept, finite overflow saturates, NaN quiet, Infinity kept', () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [-0, 0x8000],
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // half of it: a tie, to even (0)
    [3 * 2 ** -25, 0x0002], // 1.5 subnormal steps: a tie, to even (2)
    [2 ** -26, 0x0000],
    [1 + 2 ** -11, 0x3c00], // tie between 0x3c00 and 0x3c01: even
    [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02: even
    [65504, 0x7bff],
    [65520, 0x7bff], // IEEE would round to Infinity: saturates
    [-1e6, 0xfbff],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [NaN, 0x7e00],
  ];
  const out = new Uint16Array(cases.length);
  encodeF16(Float32Array.from(cases.map(([x]) => x)), out);
  assert.deepEqual(
    Array.from(out, (h) => h.toString(16)),
    cases.map(([, h]) => h.toString(16)),
  );
});

test('q8: scale max|x|/127 as binary32, q rounds half towards +infinity, all-zero block has scale 0, last block shorter', () => {
  // Blocks of 4. Blocks 1 and 2: max 127, so s = 1 exactly: q = round(x), 2.5 -> 3, -2.5 -> -2,
  // 0.5 -> 1, -0.5 -> 0. Block 3: all zero (with -0): scale 0, q 0. Block 4 (shorter, 1 value): 254 -> s = 2, q = 127.
  const values = Float32Array.from([127, 2.5, -2.5, 0.5, -0.5, 1.25, -127, 3, 0, -0, 0, 0, 254]);
  const out = new Uint8Array(values.length + 4 * 4);
  assert.equal(encodeQ8(values, 4, out), 13 + 4 * 4);
  const q = (...v: number[]) => Buffer.from(Int8Array.from(v).buffer).toString('hex');
  assert.equal(hex(out.subarray(0, 29)), '0000803f' + q(127, 3, -2, 1) + '0000803f' + q(0, 1, -127, 3) + '00000000' + q(0, 0, 0, 0) + '00000040' + q(127));
  // scale of a block with max 1: 1/127 in binary64, rounded to binary32
  const one = new Uint8Array(5);
  encodeQ8(Float32Array.from([1]), 256, one);
  assert.equal(Buffer.from(one).readFloatLE(0), Math.fround(1 / 127));
  assert.equal(hex(one.subarray(0, 4)), '0402013c'); // 0x3c010204 = 0.0078740157 (the binary32 nearest to 1/127; Python: struct.pack('<f', 1/127))
  assert.equal(one[4], 127);
  const decoded = new Float32Array(values.length);
  decodeQ8(out, values.length, 4, decoded);
  assert.deepEqual(Array.from(decoded), [127, 3, -2, 1, 0, 1, -127, 3, 0, 0, 0, 0, 254]);
});

test('bundle: tensors at offsets that are multiples of 4 with zero padding, block only on q8, row-major little-endian float32', () => {
  const { specs, payloadBytes } = layoutTensors([
    { name: 'a', shape: [3], dtype: 'float16' },
    { name: 'b', shape: [5], dtype: 'q8', block: 4 },
    { name: 'c', shape: [2], dtype: 'float32' },
  ]);
  assert.deepEqual(specs, [
    { name: 'a', shape: [3], dtype: 'float16', offset: 0, bytes: 6 },
    { name: 'b', shape: [5], dtype: 'q8', offset: 8, bytes: 5 + 4 * 2, block: 4 },
    { name: 'c', shape: [2], dtype: 'float32', offset: 24, bytes: 8 },
  ]);
  assert.equal(payloadBytes, 32);
  // Row-major: element [i][j] of a [2, 3] tensor is value i * 3 + j, as float32 little-endian.
  const bundle = encodeBundle([{ name: 'w', shape: [2, 3], dtype: 'float32', data: Float32Array.from([0, 1, 2, 3, 4, 5]) }], { kind: 'test' });
  const headerBytes = bundle.readUInt32LE(4);
  const start = Math.ceil((8 + headerBytes) / 8) * 8;
  assert.ok(
    bundle.subarray(8 + headerBytes, start).every((b) => b === 0),
    'zero padding after the header',
  );
  assert.equal(bundle.byteLength, start + 24);
  assert.equal(hex(bundle.subarray(start)), '00000000' + '0000803f' + '00000040' + '00004040' + '00008040' + '0000a040');
});
