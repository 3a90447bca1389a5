import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { chunkCount, splitIntoChunks, type Chunk } from '../shared/bundle/chunking.js';
import { Reassembler } from '../shared/bundle/reassembly.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { mulberry32, shuffleInPlace } from '../shared/util/random.js';
import { sha256Hex } from '../shared/bundle/tensor-bundle.js';

const MAX = 1 << 30;

function randomBytes(n: number, seed: number): Buffer {
  const rng = mulberry32(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rng() * 256);
  return b;
}

test('property: any size, any chunk size, shuffled with duplicates -> the same bytes back', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 20_000 }),
      fc.integer({ min: 1, max: 3000 }),
      fc.integer(),
      fc.integer({ min: 0, max: 10 }),
      (size, chunkBytes, seed, dups) => {
        const bundle = randomBytes(size, seed);
        const chunks = [...splitIntoChunks(bundle, chunkBytes)];
        assert.equal(chunks.length, chunkCount(size, chunkBytes));
        const rng = mulberry32(seed ^ 0x5bd1e995);
        const delivery = [...chunks];
        for (let i = 0; i < dups; i++) delivery.push(chunks[Math.floor(rng() * chunks.length)]!);
        shuffleInPlace(delivery, rng);
        const r = Reassembler.fromChunk(delivery[0]!, MAX, sha256Hex(bundle));
        let added = 0;
        for (const c of delivery) if (r.accept(c) === 'added') added++;
        assert.equal(added, chunks.length, 'each chunk is added exactly once, duplicates are ignored');
        assert.ok(r.complete);
        assert.deepEqual(r.missing(), []);
        assert.ok(r.finish().equals(bundle));
      },
    ),
    { numRuns: 200 },
  );
});

test('property: missing chunks are named exactly, and only their resend completes the bundle', () => {
  fc.assert(
    fc.property(fc.integer({ min: 2, max: 5000 }), fc.integer({ min: 1, max: 500 }), fc.integer(), (size, chunkBytes, seed) => {
      const bundle = randomBytes(size, seed);
      const chunks = [...splitIntoChunks(bundle, chunkBytes)];
      const rng = mulberry32(seed);
      const dropped = new Set(chunks.filter(() => rng() < 0.3).map((c) => c.seq));
      const r = Reassembler.fromChunk(chunks[0]!, MAX, sha256Hex(bundle));
      for (const c of chunks) if (!dropped.has(c.seq)) r.accept(c);
      assert.deepEqual(
        r.missing(),
        [...dropped].sort((a, b) => a - b),
      );
      assert.equal(r.complete, dropped.size === 0);
      for (const seq of r.missing()) r.accept(chunks[seq]!);
      assert.ok(r.finish().equals(bundle));
    }),
    { numRuns: 200 },
  );
});

test('property: one corrupted byte in one chunk is caught by its CRC32 and nothing is stored', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 5000 }),
      fc.integer({ min: 1, max: 700 }),
      fc.integer(),
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      (size, chunkBytes, seed, where, flip) => {
        const bundle = randomBytes(size, seed);
        const chunks = [...splitIntoChunks(bundle, chunkBytes)];
        const victim = chunks[where % chunks.length]!;
        const data = Buffer.from(victim.data);
        data[where % data.length]! ^= flip;
        const corrupted: Chunk = { ...victim, data };
        const r = Reassembler.fromChunk(chunks[0]!, MAX, sha256Hex(bundle));
        assert.throws(
          () => r.accept(corrupted),
          (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.CHUNK_CRC,
        );
        assert.ok(r.missing().includes(victim.seq), 'the corrupted chunk is still missing');
        for (const c of chunks) r.accept(c);
        assert.ok(r.finish().equals(bundle), 'the good copy repairs it');
      },
    ),
    { numRuns: 200 },
  );
});

test('a bundle whose chunks are individually fine but whose SHA-256 differs is refused', () => {
  const bundle = randomBytes(1000, 1);
  const chunks = [...splitIntoChunks(bundle, 300)];
  const r = Reassembler.fromChunk(chunks[0]!, MAX, sha256Hex(randomBytes(1000, 2)));
  for (const c of chunks) r.accept(c);
  assert.throws(
    () => r.finish(),
    (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.BUNDLE_SHA,
  );
  // The SHA-256 may also come later (updates announce it in update-done).
  assert.ok(Reassembler.fromChunk(chunks[0]!, MAX).accept(chunks[0]!) === 'added');
});

test('inconsistent headers, foreign chunks, wrong lengths and oversize bundles are refused', () => {
  const bundle = randomBytes(1000, 3);
  const chunks = [...splitIntoChunks(bundle, 300)];
  const r = Reassembler.fromChunk(chunks[0]!, MAX);
  const foreign = [...splitIntoChunks(randomBytes(1200, 4), 300)][1]!;
  assert.throws(
    () => r.accept(foreign),
    (e: unknown) => (e as FedlineError).code === ErrorCodes.CHUNK_MISMATCH,
  );
  assert.throws(
    () => r.accept({ ...chunks[1]!, seq: 9 }),
    (e: unknown) => (e as FedlineError).code === ErrorCodes.CHUNK_MISMATCH,
  );
  assert.throws(
    () => r.accept({ ...chunks[1]!, data: chunks[1]!.data.subarray(1) }),
    (e: unknown) => (e as FedlineError).code === ErrorCodes.CHUNK_MISMATCH,
  );
  assert.throws(
    () => Reassembler.fromChunk({ ...chunks[0]!, total: 7 }, MAX),
    (e: unknown) => (e as FedlineError).code === ErrorCodes.CHUNK_MISMATCH,
  );
  assert.throws(
    () => Reassembler.fromChunk(chunks[0]!, 999),
    (e: unknown) => (e as FedlineError).code === ErrorCodes.MSG_OVERSIZE,
  );
  assert.throws(() => r.finish(), /incomplete/);
});
