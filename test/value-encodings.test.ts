import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  allFiniteF16,
  allFiniteQ8,
  decodeF16,
  decodeQ8,
  decodeValues,
  encodedBytes,
  encodeF16,
  encodeQ8,
  encodeValues,
  unitOf,
} from '../shared/bundle/value-encodings.js';
import { mulberry32 } from '../shared/util/random.js';

const f16 = (x: number) => {
  const h = new Uint16Array(1);
  encodeF16(Float32Array.of(x), h);
  return h[0]!;
};
const roundTripF16 = (x: number) => {
  const h = new Uint16Array(1);
  const out = new Float32Array(1);
  encodeF16(Float32Array.of(x), h);
  decodeF16(h, out);
  return out[0]!;
};

test('f16: known half-precision bit patterns, round to nearest even', () => {
  assert.equal(f16(1), 0x3c00);
  assert.equal(f16(-2), 0xc000);
  assert.equal(f16(0.1), 0x2e66);
  assert.equal(f16(65504), 0x7bff);
  assert.equal(f16(2 ** -14), 0x0400); // smallest normal
  assert.equal(f16(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(f16(2 ** -26), 0x0000); // below half of it: zero
  assert.equal(f16(-0), 0x8000);
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1.0)
  assert.equal(f16(1 + 2 ** -11), 0x3c00);
  assert.equal(f16(1 + 3 * 2 ** -11), 0x3c02);
});

test('f16: NaN and infinities survive, finite overflow saturates at ±65504, and the finite check sees them', () => {
  assert.ok(Number.isNaN(roundTripF16(Number.NaN)));
  assert.equal(roundTripF16(Number.POSITIVE_INFINITY), Number.POSITIVE_INFINITY);
  assert.equal(roundTripF16(Number.NEGATIVE_INFINITY), Number.NEGATIVE_INFINITY);
  assert.equal(roundTripF16(1e6), 65504);
  assert.equal(roundTripF16(-3.4e38), -65504);
  assert.equal(roundTripF16(65519), 65504, 'rounding up past the largest half saturates');
  assert.equal(allFiniteF16(Uint16Array.of(f16(1), f16(-65504))), true);
  assert.equal(allFiniteF16(Uint16Array.of(f16(1), f16(Number.NaN))), false);
  assert.equal(allFiniteF16(Uint16Array.of(f16(Number.NEGATIVE_INFINITY))), false);
});

test('property: f16 round trip is within max(|x| * 2^-11, 2^-25) for |x| <= 65504', () => {
  fc.assert(
    fc.property(fc.float({ min: -65504, max: 65504, noNaN: true }), (x) => {
      const y = roundTripF16(x);
      const bound = Math.max(Math.abs(Math.fround(x)) * 2 ** -11, 2 ** -25);
      assert.ok(Math.abs(y - Math.fround(x)) <= bound, `${x} -> ${y}, error ${Math.abs(y - x)} > ${bound}`);
    }),
    { numRuns: 5000 },
  );
});

test('f16: every half value decodes and re-encodes to itself (exact)', () => {
  const halves = new Uint16Array(65536).map((_, i) => i);
  const values = new Float32Array(65536);
  decodeF16(halves, values);
  const back = new Uint16Array(65536);
  encodeF16(values, back);
  for (let h = 0; h < 65536; h++) {
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue; // NaN payloads are not kept
    assert.equal(back[h], h, `half ${h.toString(16)}`);
  }
});

test('property: q8 round trip is within max|x| / 254 of each block (plus float32 rounding), any block size', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 3000 }),
      fc.integer({ min: 1, max: 700 }),
      fc.integer(),
      fc.double({ min: 1e-6, max: 1e4, noNaN: true }),
      (count, block, seed, scale) => {
        const rng = mulberry32(seed);
        const x = Float32Array.from({ length: count }, () => (rng() * 2 - 1) * scale);
        const bytes = new Uint8Array(encodedBytes('q8', count, block));
        assert.equal(encodeQ8(x, block, bytes), bytes.length);
        const y = new Float32Array(count);
        decodeQ8(bytes, count, block, y);
        for (let start = 0; start < count; start += block) {
          let maxAbs = 0;
          for (let i = start; i < Math.min(count, start + block); i++) maxAbs = Math.max(maxAbs, Math.abs(x[i]!));
          const bound = (maxAbs / 254) * (1 + 1e-6) + maxAbs * 2 ** -23;
          for (let i = start; i < Math.min(count, start + block); i++)
            assert.ok(Math.abs(x[i]! - y[i]!) <= bound, `value ${i}: ${x[i]} -> ${y[i]} (bound ${bound})`);
        }
        assert.ok(allFiniteQ8(bytes, count, block));
      },
    ),
    { numRuns: 300 },
  );
});

test('q8: a zero block stays zero; NaN or Infinity make the block scale non-finite, which the finite check catches', () => {
  const block = 4;
  const x = Float32Array.of(0, 0, 0, 0, 1, -0.5, 0.25, 0, 3, Number.NaN, 1);
  const bytes = new Uint8Array(encodedBytes('q8', x.length, block));
  encodeQ8(x, block, bytes);
  const y = new Float32Array(x.length);
  decodeQ8(bytes, x.length, block, y);
  assert.deepEqual([...y.subarray(0, 4)], [0, 0, 0, 0]);
  assert.ok(Math.abs(y[5]! + 0.5) <= 1 / 254);
  assert.equal(allFiniteQ8(bytes, x.length, block), false);
  assert.equal(allFiniteQ8(bytes.subarray(0, encodedBytes('q8', 8, block)), 8, block), true, 'the first two blocks are fine');
  const inf = new Uint8Array(encodedBytes('q8', 2, 2));
  encodeQ8(Float32Array.of(1, Number.POSITIVE_INFINITY), 2, inf);
  assert.equal(allFiniteQ8(inf, 2, 2), false);
});

test('sizes: f16 is half of f32; q8 with 256-value blocks is 3.94x smaller; units describe independently encodable pieces', () => {
  assert.equal(encodedBytes('float32', 1000), 4000);
  assert.equal(encodedBytes('float16', 1000), 2000);
  assert.equal(encodedBytes('q8', 1000, 256), 1000 + 4 * 4);
  assert.ok(encodedBytes('float32', 256e3) / encodedBytes('q8', 256e3) > 3.93);
  assert.deepEqual(unitOf('q8', 256), { unitValues: 256, unitBytes: 260 });
  const rng = mulberry32(3);
  const x = Float32Array.from({ length: 1000 }, () => rng() - 0.5);
  for (const dtype of ['float32', 'float16', 'q8'] as const) {
    const bytes = new Uint8Array(encodedBytes(dtype, x.length));
    assert.equal(encodeValues(dtype, x, bytes), bytes.length);
    const y = new Float32Array(x.length);
    decodeValues(dtype, bytes, x.length, y);
    const tol = dtype === 'float32' ? 0 : dtype === 'float16' ? 2 ** -12 : 1 / 254;
    for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i]! - y[i]!) <= tol, `${dtype} ${i}`);
    // Decoding from an odd byte offset works too (chunk data sits anywhere in a packet).
    const shifted = new Uint8Array(bytes.length + 1);
    shifted.set(bytes, 1);
    const z = new Float32Array(x.length);
    decodeValues(dtype, shifted.subarray(1), x.length, z);
    assert.deepEqual(z, y);
  }
});
