import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verifyUpdate } from '../aggregator/verify-update.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { UpdateMeta } from '../shared/protocol/messages.js';
import { encodeBundle, type NamedTensor } from '../shared/bundle/tensor-bundle.js';

const specs = [
  { name: 'k', shape: [2, 2], dtype: 'float32' as const },
  { name: 'b', shape: [2], dtype: 'float32' as const },
];
const meta: UpdateMeta = {
  kind: 'update',
  agent: 'site-a',
  round: 4,
  baseVersion: 3,
  sampleCount: 50,
  epochs: 1,
  metricsBefore: null,
  metricsAfter: null,
  trainMs: 10,
  backend: 'cpu',
};
const tensors = (k = [1, 2, 3, 4], b = [5, 6]): NamedTensor[] => [
  { name: 'k', shape: [2, 2], dtype: 'float32', data: Float32Array.from(k) },
  { name: 'b', shape: [2], dtype: 'float32', data: Float32Array.from(b) },
];
const expect = { round: 4, agent: 'site-a', baseVersion: 3, tensors: specs };
const rejects = (bytes: Uint8Array, code: string, pattern: RegExp) =>
  assert.throws(
    () => verifyUpdate(bytes, expect),
    (e: unknown) => e instanceof FedlineError && e.code === code && pattern.test(e.message),
  );

test('a well-formed update passes verification', () => {
  const decoded = verifyUpdate(encodeBundle(tensors(), meta), expect);
  assert.equal(decoded.header.meta.sampleCount, 50);
});

test('NaN, Infinity, wrong shapes, missing or extra tensors, wrong base, round or agent are each refused with their code', () => {
  rejects(encodeBundle(tensors([1, Number.NaN, 3, 4]), meta), ErrorCodes.UPDATE_NONFINITE, /"k" contains NaN/);
  rejects(encodeBundle(tensors([1, 2, 3, 4], [Number.POSITIVE_INFINITY, 0]), meta), ErrorCodes.UPDATE_NONFINITE, /"b"/);
  rejects(
    encodeBundle([{ name: 'k', shape: [4], dtype: 'float32', data: new Float32Array(4) }, tensors()[1]!], meta),
    ErrorCodes.UPDATE_MANIFEST,
    /"k" is float32\[4\], the global model has float32\[2, 2\]/,
  );
  rejects(encodeBundle([tensors()[0]!], meta), ErrorCodes.UPDATE_MANIFEST, /missing: b/);
  rejects(
    encodeBundle([...tensors(), { name: 'extra', shape: [1], dtype: 'float32', data: new Float32Array(1) }], meta),
    ErrorCodes.UPDATE_MANIFEST,
    /unexpected: extra/,
  );
  rejects(encodeBundle(tensors(), { ...meta, baseVersion: 2 }), ErrorCodes.WRONG_BASE, /version 2/);
  rejects(encodeBundle(tensors(), { ...meta, round: 5 }), ErrorCodes.UPDATE_MANIFEST, /round 5/);
  rejects(encodeBundle(tensors(), { ...meta, agent: 'site-b' }), ErrorCodes.UPDATE_MANIFEST, /site-b/);
  rejects(encodeBundle(tensors(), { ...meta, sampleCount: 0 }), ErrorCodes.BUNDLE_FORMAT, /sampleCount/);
  rejects(encodeBundle(tensors(), { ...meta, sampleCount: 2.5 }), ErrorCodes.BUNDLE_FORMAT, /sampleCount/);
  rejects(encodeBundle(tensors(), { kind: 'model' }), ErrorCodes.BUNDLE_FORMAT, /meta is malformed/);
});
