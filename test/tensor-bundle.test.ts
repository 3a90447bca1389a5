import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { bundleTensors, decodeBundle, encodeBundle, layoutTensors, type NamedTensor } from '../shared/bundle/tensor-bundle.js';

const tensors: NamedTensor[] = [
  { name: 'conv/kernel', shape: [3, 3, 1, 2], dtype: 'float32', data: Float32Array.from({ length: 18 }, (_, i) => i * 0.5 - 3) },
  { name: 'conv/bias', shape: [3], dtype: 'float32', data: Float32Array.from([1, -2, 3.25]) },
  { name: 'dense/kernel', shape: [2, 0], dtype: 'float32', data: new Float32Array(0) },
  { name: 'scalar', shape: [], dtype: 'float32', data: Float32Array.from([Math.PI]) },
];

test('bundles round-trip tensors and meta, with an 8-byte-aligned payload laid out like tfjs weights.bin', () => {
  const bytes = encodeBundle(tensors, { kind: 'model', note: 'ünïcode' });
  const decoded = decodeBundle(bytes);
  assert.equal(decoded.payloadStart % 8, 0);
  assert.deepEqual(decoded.header.meta, { kind: 'model', note: 'ünïcode' });
  const back = bundleTensors(decoded);
  assert.deepEqual(
    back.map((t) => [t.name, t.shape]),
    tensors.map((t) => [t.name, t.shape]),
  );
  back.forEach((t, i) => assert.deepEqual([...t.data], [...tensors[i]!.data]));
  // tfjs' weights.bin is the float32 values back to back in manifest order: so is the payload.
  const payload = new Float32Array(bytes.buffer, bytes.byteOffset + decoded.payloadStart, (bytes.byteLength - decoded.payloadStart) / 4);
  assert.deepEqual(
    [...payload],
    tensors.flatMap((t) => [...t.data]),
  );
  assert.equal(layoutTensors(tensors).payloadBytes, (18 + 3 + 1) * 4);
});

test('malformed bundles are refused with FL_BUNDLE_FORMAT and a reason', () => {
  const good = encodeBundle(tensors, null);
  const expectFormat = (bytes: Uint8Array, pattern: RegExp) =>
    assert.throws(
      () => decodeBundle(bytes),
      (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.BUNDLE_FORMAT && pattern.test(e.message),
    );
  expectFormat(Buffer.from('nope'), /magic/);
  const badMagic = Buffer.from(good);
  badMagic[0] = 0x58;
  expectFormat(badMagic, /magic/);
  const hugeHeader = Buffer.from(good);
  hugeHeader.writeUInt32LE(0xffffff00, 4);
  expectFormat(hugeHeader, /header length/);
  expectFormat(good.subarray(0, good.length - 4), /outside the payload/);
  assert.throws(() => encodeBundle([{ name: 'x', shape: [2], dtype: 'float32', data: new Float32Array(3) }], null), /3 values but shape \[2\]/);
  assert.throws(() => encodeBundle([tensors[1]!, tensors[1]!], null), /duplicate/);
});
