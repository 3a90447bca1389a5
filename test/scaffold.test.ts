import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clientVariate, scaffoldServerStreamed, type ScaffoldParams, type ScaffoldReader } from '../shared/fl/scaffold.js';
import { fedAvgStreamed, type TensorBlockReader } from '../shared/fl/fedavg.js';
import { createStrategy } from '../aggregator/strategy-registry.js';
import { aggregatorConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { mulberry32 } from '../shared/util/random.js';
import { silentLogger } from '../shared/util/logger.js';

/**
 * SCAFFOLD's server side (shared/fl/scaffold.ts, aggregator/scaffold-strategy.ts) against a float64
 * reference of Karimireddy et al. 2020, Algorithm 1 option II, written out here per client (Δc_i
 * formed as the client would form it), over three rounds with partial participation and small
 * blocks; η_g = 1 gives FedAvg's weights bit for bit; the variate c is journaled so that a restart
 * or a redone round gives the same bytes.
 */

const tensors = [
  { name: 'a', length: 37 },
  { name: 'b', length: 5 },
];
const total = tensors.reduce((s, t) => s + t.length, 0);
type Model = Record<string, Float32Array>;

function reader(id: string, weight: number, values: Model, steps?: number): ScaffoldReader {
  return { id, weight, steps: steps ?? 1, read: async (name, start, out) => out.set(values[name]!.subarray(start, start + out.length)) };
}

function randomModel(rng: () => number, scale: number, around?: Model): Model {
  return Object.fromEntries(
    tensors.map((t) => [t.name, Float32Array.from({ length: t.length }, (_, i) => (around ? around[t.name]![i]! : 0) + (rng() - 0.5) * scale)]),
  );
}

/** Round r's results: three of four sites (s2 misses odd rounds), each with its own sample count and step count. */
function clientsOf(base: Model, round: number): { id: string; weight: number; steps: number; model: Model }[] {
  const rng = mulberry32(2000 + round);
  return ['s1', 's2', 's3', 's4']
    .map((id, k) => ({ id, weight: 10 * (k + 1), steps: 3 + k, model: randomModel(rng, 0.2, base) }))
    .filter((c) => !(c.id === 's2' && round % 2 === 1));
}

function flat(model: Model): Float64Array {
  const out = new Float64Array(total);
  let at = 0;
  for (const t of tensors) for (let i = 0; i < t.length; i++) out[at++] = model[t.name]![i]!;
  return out;
}

/** float64 reference of one server round: Δy_i and Δc_i per client, then x += η_g mean(Δy), c += |S|/N mean(Δc). */
function referenceRound(p: ScaffoldParams, x: Float64Array, c: Float64Array, clients: ReturnType<typeof clientsOf>): { x: Float64Array; c: Float64Array } {
  const n = clients.reduce((a, k) => a + k.weight, 0);
  const ys = clients.map((k) => flat(k.model));
  const nx = new Float64Array(total);
  const nc = new Float64Array(total);
  for (let i = 0; i < total; i++) {
    let dy = 0;
    let dc = 0;
    clients.forEach((k, j) => {
      const deltaY = ys[j]![i]! - x[i]!;
      const ciPlusMinusCi = -c[i]! + (x[i]! - ys[j]![i]!) / (k.steps * p.localLearningRate);
      dy += (k.weight / n) * deltaY;
      dc += (k.weight / n) * ciPlusMinusCi;
    });
    nx[i] = x[i]! + p.globalLearningRate * dy;
    nc[i] = c[i]! + (clients.length / p.clients) * dc;
  }
  return { x: nx, c: nc };
}

async function streamedRound(p: ScaffoldParams, x: Model, clients: ReturnType<typeof clientsOf>, c: Model | null): Promise<{ x: Model; c: Model }> {
  const next: Model = Object.fromEntries(tensors.map((t) => [t.name, new Float32Array(t.length).fill(Number.NaN)]));
  const written: Model = Object.fromEntries(tensors.map((t) => [t.name, new Float32Array(t.length).fill(Number.NaN)]));
  await scaffoldServerStreamed(
    p,
    clients.map((k) => reader(k.id, k.weight, k.model, k.steps)),
    reader('base', 1, x),
    tensors,
    {
      read: c
        ? async (name, start, out) => {
            out.set(c[name]!.subarray(start, start + out.length));
            return true;
          }
        : null,
      write: async (name, start, values) => written[name]!.set(values, start),
    },
    (name, start, values) => next[name]!.set(values, start),
    8, // blocks of 8: tensor and block edges are crossed
  );
  return { x: next, c: written };
}

for (const globalLearningRate of [1, 0.5]) {
  test(`SCAFFOLD server (η_g ${globalLearningRate}): three streamed rounds with partial participation match the float64 reference`, async () => {
    // Prepare
    const p: ScaffoldParams = { globalLearningRate, localLearningRate: 0.01, clients: 4 };
    let x = randomModel(mulberry32(7), 1);
    let ref: { x: Float64Array; c: Float64Array } = { x: flat(x), c: new Float64Array(total) };
    let c: Model | null = null;
    for (let round = 1; round <= 3; round++) {
      const clients = clientsOf(x, round);
      // Execute
      const got = await streamedRound(p, x, clients, c);
      ref = referenceRound(p, flat(x), c ? flat(c) : new Float64Array(total), clients);
      // Assert: within float32 rounding of the reference; c moved away from zero.
      const gx = flat(got.x);
      const gc = flat(got.c);
      for (let i = 0; i < total; i++) {
        assert.ok(Math.abs(gx[i]! - ref.x[i]!) <= 2e-6 * Math.max(1, Math.abs(ref.x[i]!)), `round ${round} x[${i}]: ${gx[i]} vs ${ref.x[i]}`);
        assert.ok(Math.abs(gc[i]! - ref.c[i]!) <= 2e-5 * Math.max(1, Math.abs(ref.c[i]!)), `round ${round} c[${i}]: ${gc[i]} vs ${ref.c[i]}`);
      }
      assert.ok(
        gc.some((v) => Math.abs(v) > 1),
        'c is the scale of a gradient (Δy / (K η_l)), not zero',
      );
      x = got.x;
      c = got.c;
    }
  });
}

test('SCAFFOLD server: η_g = 1 gives exactly FedAvg’s weights (the correction acts through the agents only)', async () => {
  const x = randomModel(mulberry32(3), 1);
  const clients = clientsOf(x, 2);
  const got = await streamedRound({ globalLearningRate: 1, localLearningRate: 0.01, clients: 4 }, x, clients, randomModel(mulberry32(4), 1));
  const fedavg: Model = Object.fromEntries(tensors.map((t) => [t.name, new Float32Array(t.length)]));
  await fedAvgStreamed(
    clients.map((k) => reader(k.id, k.weight, k.model)),
    tensors,
    (name, start, values) => fedavg[name]!.set(values, start),
  );
  for (const t of tensors) assert.deepEqual(got.x[t.name], fedavg[t.name], t.name);
});

test('SCAFFOLD client: c_i+ = c_i - c + (x - y) / (K η_l); the server’s Δc_i is the client’s c_i+ - c_i', () => {
  const x = Float32Array.from([1, 2, 3]);
  const y = Float32Array.from([0.9, 2.2, 3]);
  const c = Float32Array.from([0.5, -0.5, 0]);
  const ci = Float32Array.from([0.25, 0, 1]);
  const next = clientVariate(x, y, c, ci, 4, 0.05);
  const expected = [0.25 - 0.5 + (1 - 0.9) / 0.2, 0 + 0.5 + (2 - 2.2) / 0.2, 1 - 0 + 0];
  next.forEach((v, i) => assert.ok(Math.abs(v - expected[i]!) < 1e-5, `[${i}] ${v} vs ${expected[i]}`));
  // null c and c_i are zero (a client's first round)
  assert.deepEqual(clientVariate(x, y, null, null, 4, 0.05), clientVariate(x, y, new Float32Array(3), new Float32Array(3), 4, 0.05));
  assert.throws(() => clientVariate(x, y, c, ci, 0, 0.05), /0 local steps/);
});

function configFor(stateDir: string, extra: Record<string, unknown>) {
  const raw = {
    federation: 'f',
    mqtt: { url: 'mqtt://127.0.0.1:1' },
    stateDir,
    agents: ['s1', 's2', 's3', 's4'],
    rounds: 1,
    task: {},
    model: { classes: ['A', 'B'] },
    ...extra,
  };
  return parseConfig(aggregatorConfigSchema, raw, 'test aggregator config');
}

const bytes = (model: Model) => Buffer.concat(tensors.map((t) => Buffer.from(model[t.name]!.buffer)));

/** `rounds` rounds through the registry's scaffold strategy from `from`; `fresh`: a new instance per round (an aggregator restart). */
async function strategyRounds(stateDir: string, from: Model, rounds: number[], fresh: boolean): Promise<Model> {
  const config = configFor(stateDir, { strategy: 'scaffold', maxUpdateNormRatio: null });
  let strategy = createStrategy(config, silentLogger());
  let x = from;
  for (const round of rounds) {
    if (fresh) strategy = createStrategy(config, silentLogger());
    const setup = strategy.configureRound({ round, kind: 'train', available: config.agents, trainRoundsBefore: round - 1 });
    assert.equal(setup.task.scaffold, true, 'the task announces SCAFFOLD');
    const clients = clientsOf(x, round);
    const next: Model = Object.fromEntries(tensors.map((t) => [t.name, new Float32Array(t.length)]));
    const out = await strategy.aggregate({
      round,
      federated: tensors.map((t) => ({ name: t.name, shape: [t.length] })),
      results: clients.map((k) => reader(k.id, k.weight, k.model, k.steps)),
      failures: [],
      base: reader('base', 1, x),
      versions: { base: round, next: round + 1 },
      minClients: 1,
      output: (name, start, values) => next[name]!.set(values, start),
    });
    assert.equal(out.kind, 'weights');
    x = next;
  }
  return x;
}

test('SCAFFOLD strategy: c journaled per version; 3 rounds straight = 2, restart, 1 = the round redone (identical bytes)', async () => {
  const dirs = await Promise.all([0, 1, 2].map(() => mkdtemp(join(tmpdir(), 'fedline-scaffold-'))));
  try {
    const x0 = randomModel(mulberry32(11), 1);
    const straight = await strategyRounds(dirs[0]!, x0, [1, 2, 3], false);
    const two = await strategyRounds(dirs[1]!, x0, [1, 2], false);
    // The variate c that goes with version 3 is what the next round's agents are sent.
    const strategy = createStrategy(configFor(dirs[1]!, { strategy: 'scaffold' }), silentLogger());
    const c3 = await strategy.controlVariate!(3, tensors);
    assert.ok(c3 && [...c3.tensors.values()].some((v) => v.some((e) => e !== 0)), 'c of version 3 is stored and not zero');
    assert.equal(await strategy.controlVariate!(1, tensors), null, 'no c before the first aggregation: agents take c = 0');
    const restarted = await strategyRounds(dirs[1]!, two, [3], true);
    assert.ok(bytes(restarted).equals(bytes(straight)), 'restart changed the model');
    const redone = await strategyRounds(dirs[1]!, two, [3], true);
    assert.ok(bytes(redone).equals(bytes(straight)), 'redoing a round changed the model');
    // c matters for the server only through the agents (η_g = 1: weights are FedAvg's); its file is what a restart reads.
    const c4 = await strategy.controlVariate!(4, tensors);
    await strategyRounds(dirs[2]!, x0, [1, 2, 3], false);
    const c4Straight = await createStrategy(configFor(dirs[2]!, { strategy: 'scaffold' }), silentLogger()).controlVariate!(4, tensors);
    for (const t of tensors) assert.deepEqual(c4!.tensors.get(t.name), c4Straight!.tensors.get(t.name), `c of ${t.name} after a restart`);
    assert.deepEqual((await readdir(join(dirs[1]!, 'scaffold'))).sort(), ['v3.state', 'v4.state']);
  } finally {
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  }
});

test('SCAFFOLD strategy: an update without its step count leaves the average as a refusal; the others aggregate', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'fedline-scaffold-'));
  try {
    const strategy = createStrategy(configFor(dir, { strategy: 'scaffold', maxUpdateNormRatio: null }), silentLogger());
    strategy.configureRound({ round: 1, kind: 'train', available: ['s1', 's2'], trainRoundsBefore: 0 });
    const x = randomModel(mulberry32(1), 1);
    const noSteps: TensorBlockReader = { id: 's2', weight: 5, read: async (name, start, out) => out.set(x[name]!.subarray(start, start + out.length)) };
    const out = await strategy.aggregate({
      round: 1,
      federated: tensors.map((t) => ({ name: t.name, shape: [t.length] })),
      results: [reader('s1', 10, randomModel(mulberry32(2), 0.1, x), 4), noSteps],
      failures: [],
      base: reader('base', 1, x),
      versions: { base: 1, next: 2 },
      minClients: 1,
      output: () => undefined,
    });
    assert.equal(out.kind, 'weights');
    assert.deepEqual(
      out.refused?.map((f) => [f.agent, f.code]),
      [['s2', 'FL_UPDATE_MANIFEST']],
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
