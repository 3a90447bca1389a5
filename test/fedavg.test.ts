import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { allFinite, fedAvg, fedAvgStreamed, type TensorBlockReader, type WeightedTensors } from '../shared/fl/fedavg.js';
import { mulberry32 } from '../shared/util/random.js';

const input = (id: string, weight: number, w: number[], b: number[]): WeightedTensors => ({
  id,
  weight,
  tensors: new Map([
    ['w', Float32Array.from(w)],
    ['b', Float32Array.from(b)],
  ]),
});

test('FedAvg weights each client by its sample count (hand-computed)', () => {
  // Prepare: two clients, 100 and 300 samples.
  const a = input('a', 100, [1, 2, 3], [10]);
  const b = input('b', 300, [5, 6, -1], [-2]);
  // Execute
  const out = fedAvg([a, b], ['w', 'b']);
  // Assert: (100*x_a + 300*x_b) / 400
  assert.deepEqual([...out.get('w')!], [4, 5, 0]);
  assert.deepEqual([...out.get('b')!], [1]);
});

test('three clients, uneven counts: matches a float64 reference within 1e-6 and ignores input order', () => {
  const rng = mulberry32(7);
  const clients = ['site-c', 'site-a', 'site-b'].map((id, k) =>
    input(
      id,
      [17, 250, 3][k]!,
      Array.from({ length: 1000 }, () => rng() * 20 - 10),
      Array.from({ length: 5 }, () => rng()),
    ),
  );
  const out = fedAvg(clients, ['w', 'b']);
  const total = clients.reduce((s, c) => s + c.weight, 0);
  for (const name of ['w', 'b']) {
    const got = out.get(name)!;
    for (let i = 0; i < got.length; i++) {
      let ref = 0;
      for (const c of clients) ref += (c.weight / total) * c.tensors.get(name)![i]!;
      assert.ok(Math.abs(got[i]! - ref) <= 1e-6 * Math.max(1, Math.abs(ref)), `${name}[${i}]: ${got[i]} vs ${ref}`);
    }
  }
  // Same inputs in another order: bit-identical (clients are folded in id order).
  const again = fedAvg([clients[2]!, clients[0]!, clients[1]!], ['w', 'b']);
  assert.deepEqual(Buffer.from(again.get('w')!.buffer), Buffer.from(out.get('w')!.buffer));
});

test('property: streamed FedAvg (block readers) equals in-memory FedAvg bit for bit, for any block size', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 3000 }),
      fc.integer({ min: 1, max: 700 }),
      fc.integer(),
      async (k, length, block, seed) => {
        const rng = mulberry32(seed);
        const clients = Array.from({ length: k }, (_, i) =>
          input(
            `c${i}`,
            1 + Math.floor(rng() * 500),
            Array.from({ length }, () => rng() * 2 - 1),
            [rng()],
          ),
        );
        const expected = fedAvg(clients, ['w', 'b']);
        const readers: TensorBlockReader[] = clients.map((c) => ({
          id: c.id,
          weight: c.weight,
          read: async (name, start, out) => out.set(c.tensors.get(name)!.subarray(start, start + out.length)),
        }));
        const targets = new Map([
          ['w', new Float32Array(length)],
          ['b', new Float32Array(1)],
        ]);
        await fedAvgStreamed(
          readers,
          [
            { name: 'w', length },
            { name: 'b', length: 1 },
          ],
          (n, start, values) => targets.get(n)!.set(values, start),
          block,
        );
        assert.deepEqual(Buffer.from(targets.get('w')!.buffer), Buffer.from(expected.get('w')!.buffer));
        assert.deepEqual(Buffer.from(targets.get('b')!.buffer), Buffer.from(expected.get('b')!.buffer));
      },
    ),
    { numRuns: 100 },
  );
});

test('FedAvg refuses empty input, zero or non-finite weights, and missing tensors', () => {
  assert.throws(() => fedAvg([], ['w']), /at least one/);
  assert.throws(() => fedAvg([input('a', 0, [1], [1])], ['w']), /weights/);
  assert.throws(() => fedAvg([input('a', Number.NaN, [1], [1])], ['w']), /weights/);
  assert.throws(() => fedAvg([input('a', 1, [1], [1])], ['nope']), /lacks tensor "nope"/);
  assert.throws(() => fedAvg([input('a', 1, [1], [1]), input('b', 1, [1, 2], [1])], ['w']), /length 1/);
});

test('allFinite finds NaN and infinities anywhere', () => {
  assert.equal(allFinite(Float32Array.from([0, -1, 3e38])), true);
  assert.equal(allFinite(Float32Array.from([0, Number.NaN])), false);
  assert.equal(allFinite(Float32Array.from([Number.POSITIVE_INFINITY])), false);
  assert.equal(allFinite(Float32Array.from([1, Number.NEGATIVE_INFINITY, 2])), false);
});

test('property: the WebAssembly SIMD kernels and the JavaScript loop give the same bits as in-memory FedAvg, 1 to 11 clients', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 11 }),
      fc.integer({ min: 1, max: 2000 }),
      fc.integer({ min: 1, max: 300 }),
      fc.integer(),
      fc.boolean(),
      async (k, length, block, seed, simd) => {
        const rng = mulberry32(seed);
        const clients = Array.from({ length: k }, (_, i) =>
          input(
            `c${String(i).padStart(2, '0')}`,
            1 + Math.floor(rng() * 500),
            Array.from({ length }, () => (rng() * 2 - 1) * 10 ** Math.floor(rng() * 6 - 3)),
            [rng()],
          ),
        );
        const expected = fedAvg(clients, ['w', 'b']);
        const readers: TensorBlockReader[] = clients.map((c) => ({
          id: c.id,
          weight: c.weight,
          read: async (name, start, out) => out.set(c.tensors.get(name)!.subarray(start, start + out.length)),
        }));
        const got = new Float32Array(length);
        if (!simd) process.env.FEDLINE_NO_SIMD = '1';
        try {
          await fedAvgStreamed(readers, [{ name: 'w', length }], (_n, start, values) => got.set(values, start), block);
        } finally {
          delete process.env.FEDLINE_NO_SIMD;
        }
        assert.deepEqual(Buffer.from(got.buffer), Buffer.from(expected.get('w')!.buffer));
      },
    ),
    { numRuns: 150 },
  );
});

test('default blocks: several steps of clients and several fold slices per block give the same bits as in-memory FedAvg, SIMD and JavaScript', async () => {
  // 21 clients (three steps of 7) and 70,003 values: with 2 MiB a step, one block of five 16 Ki
  // slices, the last 3 values through the scalar loop.
  const rng = mulberry32(11);
  const length = 70_003;
  const clients = Array.from({ length: 21 }, (_, i) =>
    input(
      `c${String(i).padStart(2, '0')}`,
      1 + Math.floor(rng() * 500),
      Array.from({ length }, () => (rng() * 2 - 1) * 10 ** Math.floor(rng() * 6 - 3)),
      [rng()],
    ),
  );
  const expected = Buffer.from(fedAvg(clients, ['w']).get('w')!.buffer);
  const readers: TensorBlockReader[] = clients.map((c) => ({
    id: c.id,
    weight: c.weight,
    read: async (name, start, out) => out.set(c.tensors.get(name)!.subarray(start, start + out.length)),
  }));
  for (const simd of [true, false]) {
    const got = new Float32Array(length);
    if (!simd) process.env.FEDLINE_NO_SIMD = '1';
    try {
      await fedAvgStreamed(readers, [{ name: 'w', length }], (_n, start, values) => got.set(values, start));
    } finally {
      delete process.env.FEDLINE_NO_SIMD;
    }
    assert.deepEqual(Buffer.from(got.buffer), expected, simd ? 'SIMD kernels' : 'JavaScript loop');
  }
});

test('a reader never has two reads in flight, with reads of different speeds and one step per block', async () => {
  // Spool readers decode f16, q8 and differences through scratch buffers of their own: two reads
  // of one reader at once would overwrite each other's values.
  const rng = mulberry32(5);
  const length = 300_000;
  const clients = Array.from({ length: 3 }, (_, i) =>
    input(
      `c${i}`,
      1 + i,
      Array.from({ length }, () => rng() * 2 - 1),
      [0],
    ),
  );
  const inFlight = new Map<string, number>();
  let worst = 0;
  const readers: TensorBlockReader[] = clients.map((c, i) => ({
    id: c.id,
    weight: c.weight,
    read: async (name, start, out) => {
      const now = (inFlight.get(c.id) ?? 0) + 1;
      inFlight.set(c.id, now);
      worst = Math.max(worst, now);
      await new Promise((resolve) => setTimeout(resolve, i));
      out.set(c.tensors.get(name)!.subarray(start, start + out.length));
      inFlight.set(c.id, inFlight.get(c.id)! - 1);
    },
  }));
  const got = new Float32Array(length);
  await fedAvgStreamed(readers, [{ name: 'w', length }], (_n, start, values) => got.set(values, start));
  assert.equal(worst, 1, 'at most one read of a reader at a time');
  assert.deepEqual(Buffer.from(got.buffer), Buffer.from(fedAvg(clients, ['w']).get('w')!.buffer));
});
