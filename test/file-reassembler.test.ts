import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { UpdateStreamVerifier } from '../aggregator/verify-update.js';
import { splitIntoChunks, type Chunk } from '../shared/bundle/chunking.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { FileReassembler } from '../shared/bundle/file-reassembler.js';
import type { UpdateMeta } from '../shared/protocol/messages.js';
import { mulberry32, shuffleInPlace } from '../shared/util/random.js';
import { encodeBundle, sha256Hex, type NamedTensor } from '../shared/bundle/tensor-bundle.js';
import { encodeUpdateSource, tensorValues } from '../shared/bundle/encoded-update.js';
import { tempDir } from './helpers.js';

function randomBytes(n: number, seed: number): Buffer {
  const rng = mulberry32(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rng() * 256);
  return b;
}

test('property: chunks in any order with duplicates land in the file as the bundle; the SHA-256 and the in-order stream match it', async () => {
  const dir = tempDir('file-reassembler');
  try {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 20_000 }),
        fc.integer({ min: 1, max: 3000 }),
        fc.integer(),
        fc.integer({ min: 0, max: 10 }),
        async (size, chunkBytes, seed, dups) => {
          const bundle = randomBytes(size, seed);
          const chunks = [...splitIntoChunks(bundle, chunkBytes)];
          const rng = mulberry32(seed ^ 0x5bd1e995);
          const delivery = [...chunks];
          for (let i = 0; i < dups; i++) delivery.push(chunks[Math.floor(rng() * chunks.length)]!);
          shuffleInPlace(delivery, rng);
          const seen: Buffer[] = [];
          let expectedOffset = 0;
          const path = join(dir.path, `b${run++}.part`);
          const r = new FileReassembler({
            path,
            total: chunks.length,
            bundleBytes: size,
            chunkBytes,
            maxBundleBytes: 1 << 30,
            syncEveryBytes: 4096,
            onInOrder: (bytes, offset) => {
              assert.equal(offset, expectedOffset, 'in order, each byte once');
              expectedOffset += bytes.byteLength;
              seen.push(Buffer.from(bytes));
            },
          });
          let added = 0;
          for (const c of delivery) {
            if (!r.complete) assert.equal(r.digest, null);
            if (r.accept(c) === 'added') added++;
          }
          assert.equal(added, chunks.length);
          assert.ok(r.complete);
          assert.deepEqual(r.missing(), []);
          assert.equal(r.digest, sha256Hex(bundle));
          assert.ok(Buffer.concat(seen).equals(bundle));
          assert.equal(await r.finish(sha256Hex(bundle)), path);
          assert.ok(readFileSync(path).equals(bundle));
        },
      ),
      { numRuns: 100 },
    );
  } finally {
    dir.cleanup();
  }
});

test('a corrupted chunk is refused (CRC32) and stays missing; a wrong SHA-256 is refused at the end; discard removes the file', async () => {
  const dir = tempDir('file-reassembler-bad');
  try {
    const bundle = randomBytes(5000, 1);
    const chunks = [...splitIntoChunks(bundle, 700)];
    const path = join(dir.path, 'x.part');
    const r = new FileReassembler({ path, total: chunks.length, bundleBytes: 5000, chunkBytes: 700, maxBundleBytes: 1 << 20 });
    const bad: Chunk = { ...chunks[3]!, data: Buffer.from(chunks[3]!.data).fill(9, 0, 1) };
    assert.throws(
      () => r.accept(bad),
      (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.CHUNK_CRC,
    );
    for (const c of chunks) if (c.seq !== 3) r.accept(c);
    assert.deepEqual(r.missing(), [3]);
    assert.equal(r.digest, null, 'no digest before the bundle is whole');
    await assert.rejects(() => r.finish(sha256Hex(bundle)), /incomplete/);
    r.accept(chunks[3]!);
    await assert.rejects(
      () => r.finish('0'.repeat(64)),
      (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.BUNDLE_SHA,
    );
    r.discard();
    assert.equal(existsSync(path), false);
    assert.throws(
      () => new FileReassembler({ path, total: 2, bundleBytes: 5000, chunkBytes: 700, maxBundleBytes: 1 << 20 }),
      (e: unknown) => (e as FedlineError).code === ErrorCodes.CHUNK_MISMATCH,
    );
    assert.throws(
      () => new FileReassembler({ path, total: 8, bundleBytes: 5000, chunkBytes: 700, maxBundleBytes: 4999 }),
      (e: unknown) => (e as FedlineError).code === ErrorCodes.MSG_OVERSIZE,
    );
  } finally {
    dir.cleanup();
  }
});

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
const model = (k: number[], b: number[]): NamedTensor[] => [
  { name: 'k', shape: [2, 2], dtype: 'float32', data: Float32Array.from(k) },
  { name: 'b', shape: [2], dtype: 'float32', data: Float32Array.from(b) },
];
const expect = { round: 4, agent: 'site-a', baseVersion: 3, tensors: model([0, 0, 0, 0], [0, 0]) };

function streamVerify(
  bytes: Uint8Array,
  pieces: number[],
  e: typeof expect & { dtype?: 'float32' | 'float16' | 'q8'; delta?: boolean } = expect,
): FedlineError | null {
  const v = new UpdateStreamVerifier(bytes.byteLength, e);
  let at = 0;
  let i = 0;
  while (at < bytes.byteLength) {
    const n = Math.min(bytes.byteLength - at, pieces[i++ % pieces.length]!);
    v.push(bytes.subarray(at, at + n), at);
    at += n;
  }
  try {
    v.finish();
    return null;
  } catch (err) {
    return err as FedlineError;
  }
}

test('property: verification while streaming, in pieces of any size, gives the same verdict as on the whole bundle', () => {
  const cases: [Uint8Array, string | null][] = [
    [encodeBundle(model([1, 2, 3, 4], [5, 6]), meta), null],
    [encodeBundle(model([1, Number.NaN, 3, 4], [5, 6]), meta), ErrorCodes.UPDATE_NONFINITE],
    [encodeBundle(model([1, 2, 3, 4], [5, Number.NEGATIVE_INFINITY]), meta), ErrorCodes.UPDATE_NONFINITE],
    [encodeBundle(model([1, 2, 3, 4], [5, 6]), { ...meta, baseVersion: 9 }), ErrorCodes.WRONG_BASE],
    [encodeBundle(model([1, 2, 3, 4], [5, 6]), { ...meta, delta: true }), ErrorCodes.UPDATE_MANIFEST],
  ];
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 6 }), (pieces) => {
      for (const [bytes, code] of cases) assert.equal(streamVerify(bytes, pieces)?.code ?? null, code);
    }),
    { numRuns: 200 },
  );
});

test('streaming verification of f16 and q8 updates: the right encoding passes, NaN is found, the wrong encoding is refused', () => {
  for (const encoding of ['f16', 'q8'] as const) {
    const dtype = encoding === 'f16' ? ('float16' as const) : ('q8' as const);
    const read = (t: NamedTensor[]) => {
      const s = encodeUpdateSource(t.map(tensorValues), meta, { encoding, delta: false, block: 3 });
      const out = new Uint8Array(s.byteLength);
      s.read(0, out);
      return out;
    };
    const good = read(model([1, 2, 3, 4], [5, 6]));
    const nan = read(model([1, 2, Number.NaN, 4], [5, 6]));
    for (const pieces of [[good.length], [1], [5, 2, 9]]) {
      assert.equal(streamVerify(good, pieces, { ...expect, dtype }), null, `${encoding} good, pieces ${pieces}`);
      assert.equal(streamVerify(nan, pieces, { ...expect, dtype })?.code, ErrorCodes.UPDATE_NONFINITE, `${encoding} NaN, pieces ${pieces}`);
      const wrong = streamVerify(good, pieces, expect);
      assert.equal(wrong?.code, ErrorCodes.UPDATE_MANIFEST);
      assert.match(wrong!.message, new RegExp(`is ${dtype}\\[`));
    }
  }
});
