import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { verifyUpdate } from '../aggregator/verify-update.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { UpdateMeta } from '../shared/protocol/messages.js';
import { mulberry32 } from '../shared/util/random.js';
import { decodeBundle, elementCount, encodeBundle, type NamedTensor } from '../shared/bundle/tensor-bundle.js';
import { decodeValues } from '../shared/bundle/value-encodings.js';
import { encodeUpdateSource, tensorValues } from '../shared/bundle/encoded-update.js';

const meta: UpdateMeta = {
  kind: 'update',
  agent: 'site-a',
  round: 2,
  baseVersion: 1,
  sampleCount: 40,
  epochs: 1,
  metricsBefore: null,
  metricsAfter: null,
  trainMs: 5,
  backend: 'cpu',
};

function tensors(seed: number, scale = 1): NamedTensor[] {
  const rng = mulberry32(seed);
  const shapes: [string, number[]][] = [
    ['conv/kernel', [3, 3, 2, 5]],
    ['conv/bias', [5]],
    ['dense/kernel', [37, 11]],
    ['empty', [0, 3]],
    ['head/bias', [3]],
  ];
  return shapes.map(([name, shape]) => ({
    name,
    shape,
    dtype: 'float32' as const,
    data: Float32Array.from({ length: elementCount(shape) }, () => (rng() * 2 - 1) * scale),
  }));
}

function readAll(source: { byteLength: number; read(o: number, out: Uint8Array): void | Promise<void> }, pieces: number[]): Uint8Array {
  const out = new Uint8Array(source.byteLength);
  let at = 0;
  let i = 0;
  while (at < out.length) {
    const n = Math.min(out.length - at, Math.max(1, pieces[i++ % pieces.length]!));
    void source.read(at, out.subarray(at, at + n));
    at += n;
  }
  return out;
}

test('f32 without delta: the encoded source is byte for byte the bundle encodeBundle builds', () => {
  const t = tensors(1);
  const source = encodeUpdateSource(t.map(tensorValues), meta, { encoding: 'f32', delta: false });
  assert.deepEqual(Buffer.from(readAll(source, [source.byteLength])), encodeBundle(t, meta));
});

test('property: any encoding, with or without delta: reading in pieces of any size gives the same bytes, and they decode within the codec bounds', () => {
  fc.assert(
    fc.property(
      fc.constantFrom('f32', 'f16', 'q8'),
      fc.boolean(),
      fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 8 }),
      fc.integer(),
      (encoding, delta, pieces, seed) => {
        const trained = tensors(seed);
        const base = new Map(tensors(seed + 1).map((t) => [t.name, t.data]));
        const source = encodeUpdateSource(trained.map(tensorValues), { ...meta, delta }, { encoding, delta, base, block: 16 });
        const whole = readAll(source, [source.byteLength]);
        assert.deepEqual(readAll(source, pieces), whole);
        // It is a well-formed update bundle the aggregator accepts...
        const expect = { round: 2, agent: 'site-a', baseVersion: 1, tensors: trained, dtype: source.dtype, delta };
        const decoded = verifyUpdate(whole, expect);
        // ... and every value decodes back to the trained weight within the codec's bound.
        for (const spec of decoded.header.tensors) {
          const t = trained.find((x) => x.name === spec.name)!;
          const values = new Float32Array(t.data.length);
          decodeValues(spec.dtype, whole.subarray(decoded.payloadStart + spec.offset), values.length, values, spec.block);
          const b = base.get(spec.name)!;
          for (let i = 0; i < values.length; i++) {
            const got = delta ? Math.fround(values[i]! + b[i]!) : values[i]!;
            const range = delta ? 2 : 1;
            const tol = encoding === 'f32' ? (delta ? 2 ** -22 : 0) : encoding === 'f16' ? range * 2 ** -11 + 2 ** -22 : range / 254 + 2 ** -22;
            assert.ok(Math.abs(got - t.data[i]!) <= tol, `${encoding}${delta ? '+delta' : ''} ${spec.name}[${i}]: ${got} vs ${t.data[i]}`);
          }
        }
      },
    ),
    { numRuns: 60 },
  );
});

test('delta makes q8 far more precise when the update is close to the base (as after a few local epochs)', () => {
  const base = tensors(5);
  const rng = mulberry32(9);
  const trained = base.map((t) => ({ ...t, data: t.data.map((v) => v + (rng() - 0.5) * 1e-3) }));
  const baseMap = new Map(base.map((t) => [t.name, t.data]));
  const maxError = (delta: boolean) => {
    const source = encodeUpdateSource(trained.map(tensorValues), { ...meta, delta }, { encoding: 'q8', delta, base: baseMap });
    const bytes = readAll(source, [source.byteLength]);
    const d = decodeBundle(bytes);
    let worst = 0;
    for (const spec of d.header.tensors) {
      const t = trained.find((x) => x.name === spec.name)!;
      const values = new Float32Array(t.data.length);
      decodeValues(spec.dtype, bytes.subarray(d.payloadStart + spec.offset), values.length, values, spec.block);
      for (let i = 0; i < values.length; i++) worst = Math.max(worst, Math.abs((delta ? values[i]! + baseMap.get(spec.name)![i]! : values[i]!) - t.data[i]!));
    }
    return worst;
  };
  assert.ok(maxError(true) * 100 < maxError(false), `delta ${maxError(true)} vs whole ${maxError(false)}`);
});

test('delta needs every base tensor with the right size', () => {
  const t = tensors(1);
  assert.throws(() => encodeUpdateSource(t.map(tensorValues), meta, { encoding: 'f16', delta: true, base: new Map() }), /base model's tensor "conv\/kernel"/);
  assert.throws(
    () => encodeUpdateSource(t.map(tensorValues), meta, { encoding: 'f16', delta: true, base: new Map(t.map((x) => [x.name, new Float32Array(1)])) }),
    (e: unknown) => /has 1 values/.test((e as Error).message) && !(e instanceof FedlineError && e.code === ErrorCodes.BUNDLE_FORMAT),
  );
});
