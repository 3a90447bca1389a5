import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clippedFedAvgStreamed, medianStreamed, trimCount, trimmedMeanStreamed } from '../shared/fl/robust.js';
import type { TensorBlockReader } from '../shared/fl/fedavg.js';
import { createStrategy } from '../aggregator/strategy-registry.js';
import type { StrategyInput } from '../aggregator/strategy.js';
import { aggregatorConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { mulberry32 } from '../shared/util/random.js';
import { silentLogger } from '../shared/util/logger.js';

/**
 * The robust aggregation rules of shared/fl/robust.ts against float64 references computed here
 * element by element, streamed in small blocks over several tensors (so block and tensor edges are
 * crossed), and the strategies built on them through the registry. No I/O.
 */

const tensors = [
  { name: 'a', length: 37 },
  { name: 'b', length: 5 },
];

/** A client whose tensors hold `values[name]`. */
function reader(id: string, weight: number, values: Record<string, Float32Array>): TensorBlockReader {
  return { id, weight, read: async (name, start, out) => out.set(values[name]!.subarray(start, start + out.length)) };
}

function randomClients(count: number, seed: number, scale = 1): Record<string, Float32Array>[] {
  const rng = mulberry32(seed);
  return Array.from({ length: count }, () =>
    Object.fromEntries(tensors.map((t) => [t.name, Float32Array.from({ length: t.length }, () => (rng() - 0.5) * scale)])),
  );
}

/** Runs `f` with a sink collecting whole tensors. */
async function collect(f: (sink: (name: string, start: number, values: Float32Array) => void) => Promise<unknown>): Promise<Record<string, Float32Array>> {
  const out: Record<string, Float32Array> = Object.fromEntries(tensors.map((t) => [t.name, new Float32Array(t.length).fill(Number.NaN)]));
  await f((name, start, values) => out[name]!.set(values, start));
  return out;
}

/** float64 reference: for each element, `pick` of the clients' values sorted ascending. */
function reference(clients: Record<string, Float32Array>[], pick: (sorted: number[]) => number): Record<string, Float64Array> {
  return Object.fromEntries(
    tensors.map((t) => [t.name, Float64Array.from({ length: t.length }, (_, i) => pick(clients.map((c) => c[t.name]![i]!).sort((x, y) => x - y)))]),
  );
}

function assertClose(actual: Record<string, Float32Array>, expected: Record<string, Float64Array>): void {
  for (const t of tensors) {
    for (let i = 0; i < t.length; i++) {
      const a = actual[t.name]![i]!;
      const e = expected[t.name]![i]!;
      assert.ok(Number.isFinite(a), `${t.name}[${i}] is ${a}`);
      assert.ok(Math.abs(a - e) <= 1e-6 * Math.max(1, Math.abs(e)), `${t.name}[${i}]: ${a} vs ${e}`);
    }
  }
}

test('trimCount: ceil(fraction x n), never more than (n - 1) / 2 from each end', () => {
  assert.deepEqual(
    [1, 2, 3, 4, 5, 10, 11].map((n) => trimCount(n, 0.2)),
    [0, 0, 1, 1, 1, 2, 3],
  );
  assert.equal(trimCount(10, 0), 0);
  assert.equal(trimCount(10, 0.1), 1);
  assert.throws(() => trimCount(4, 0.5), RangeError);
});

test('coordinate-wise trimmed mean matches a float64 reference, streamed in blocks of 8', async () => {
  // Prepare: five clients, one of them with values 1e6 times larger (it is trimmed everywhere).
  const clients = [...randomClients(4, 1), ...randomClients(1, 2, 1e6)];
  const readers = clients.map((c, k) => reader(`site-${k}`, k === 4 ? 1e6 : 10, c));

  // Execute
  let trimmed = -1;
  const out = await collect(async (sink) => ({ trimmed } = await trimmedMeanStreamed(readers, tensors, sink, 0.2, 8)));

  // Assert: one value cut from each end (ceil(0.2 x 5)), the rest averaged without weights.
  assert.equal(trimmed, 1);
  assertClose(
    out,
    reference(clients, (s) => (s[1]! + s[2]! + s[3]!) / 3),
  );
  for (const t of tensors)
    assert.ok(
      out[t.name]!.every((v) => Math.abs(v) < 0.5),
      'the outlier never reaches the result',
    );
});

test('coordinate-wise median matches a float64 reference for odd and even counts', async () => {
  for (const count of [1, 2, 3, 4, 7]) {
    // Prepare
    const clients = randomClients(count, 10 + count);
    const readers = clients.map((c, k) => reader(`site-${k}`, 1, c));

    // Execute
    const out = await collect((sink) => medianStreamed(readers, tensors, sink, 8));

    // Assert: the middle value, or the mean of the two middle values.
    const mid = count >> 1;
    assertClose(
      out,
      reference(clients, (s) => (count % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2)),
    );
  }
});

test('the median of two honest sites and one at the float32 limit stays between the honest values, NaN-free', async () => {
  // Prepare: values near ±3.4e38 would overflow a float32 sum.
  const honest = randomClients(2, 5);
  const huge = Object.fromEntries(tensors.map((t) => [t.name, new Float32Array(t.length).fill(3.4e38)]));
  const readers = [...honest, huge].map((c, k) => reader(`site-${k}`, 1, c));

  // Execute
  const median = await collect((sink) => medianStreamed(readers, tensors, sink));
  const trimmed = await collect((sink) => trimmedMeanStreamed(readers, tensors, sink, 0.2));

  // Assert
  for (const out of [median, trimmed]) {
    for (const t of tensors) {
      out[t.name]!.forEach((v, i) => {
        assert.ok(v >= Math.min(honest[0]![t.name]![i]!, honest[1]![t.name]![i]!) && v <= Math.max(honest[0]![t.name]![i]!, honest[1]![t.name]![i]!));
      });
    }
  }
});

test('norm-clipped FedAvg: each change scaled to at most the median change, then sample-weighted', async () => {
  // Prepare: a base and three updates whose changes have norms 1x, 2x and 50x of a unit step.
  const base = randomClients(1, 20)[0]!;
  const dirs = randomClients(3, 21);
  const norm = (d: Record<string, Float32Array>) => Math.sqrt(tensors.reduce((s, t) => s + d[t.name]!.reduce((q, v) => q + v * v, 0), 0));
  const factors = [1, 2, 50];
  const deltas = dirs.map((d, k) => Object.fromEntries(tensors.map((t) => [t.name, d[t.name]!.map((v) => (v / norm(d)) * factors[k]!)])));
  const clients = deltas.map((d) => Object.fromEntries(tensors.map((t) => [t.name, base[t.name]!.map((v, i) => v + d[t.name]![i]!)])));
  const weights = [10, 30, 1_000];
  const readers = clients.map((c, k) => reader(`site-${k}`, weights[k]!, c));

  // Execute
  let result: Awaited<ReturnType<typeof clippedFedAvgStreamed>> | undefined;
  const out = await collect(async (sink) => (result = await clippedFedAvgStreamed(readers, reader('base', 0, base), tensors, sink)));

  // Assert: bound = median norm (2); scales 1, 1, 2/50; w = base + sum p_k s_k delta_k in float64.
  assert.ok(Math.abs(result!.bound - 2) < 1e-5);
  assert.deepEqual(
    [...result!.scales.values()].map((s) => s.toFixed(4)),
    ['1.0000', '1.0000', '0.0400'],
  );
  const total = weights.reduce((a, b) => a + b, 0);
  const scales = [1, 1, 2 / norm(deltas[2]!)];
  const expected = Object.fromEntries(
    tensors.map((t) => [
      t.name,
      Float64Array.from(
        { length: t.length },
        (_, i) => base[t.name]![i]! + deltas.reduce((s, d, k) => s + (weights[k]! / total) * scales[k]! * d[t.name]![i]!, 0),
      ),
    ]),
  );
  for (const t of tensors) {
    out[t.name]!.forEach((v, i) => assert.ok(Math.abs(v - expected[t.name]![i]!) < 1e-5, `${t.name}[${i}]: ${v} vs ${expected[t.name]![i]}`));
  }
});

test('the registry builds each robust strategy by name, behind the norm screen', async () => {
  // Prepare
  const config = parseConfig(
    aggregatorConfigSchema,
    { federation: 'test', mqtt: { url: 'mqtt://127.0.0.1:1' }, stateDir: 's', agents: ['a'], rounds: 1, task: {}, model: { classes: ['A', 'B'] } },
    'test aggregator config',
  );
  const clients = [[1], [2], [3], [100]].map((v) => ({ w: Float32Array.from(v) }));
  const written: Record<string, number> = {};

  // Execute: each strategy, norm screen off, on the values 1, 2, 3, 100 (equal weights).
  for (const name of ['fedavg', 'fedavg-clipped', 'trimmed-mean', 'median']) {
    const strategy = createStrategy({ ...config, strategy: name, maxUpdateNormRatio: null, maxUpdateNorm: null }, silentLogger());
    assert.equal(strategy.name, name);
    assert.equal(createStrategy({ ...config, strategy: name }, silentLogger()).name, `norm-screen(${name})`);
    const input: StrategyInput = {
      round: 1,
      federated: [{ name: 'w', shape: [1] }],
      results: clients.map((c, k) => reader(`site-${k}`, 1, c)),
      failures: [],
      base: reader('base', 0, { w: Float32Array.from([0]) }),
      minClients: 1,
      output: (_n, _s, values) => void (written[name] = values[0]!),
    };
    assert.equal((await strategy.aggregate(input)).kind, 'weights');
  }

  // Assert: mean 26.5; clipped to the median change (2, the lower middle): (1 + 2 + 2 + 2) / 4; trimmed (ceil(0.2 x 4) = 1 each end): 2.5; median 2.5.
  assert.deepEqual(written, { fedavg: 26.5, 'fedavg-clipped': 1.75, 'trimmed-mean': 2.5, median: 2.5 });
});
