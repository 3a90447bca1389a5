import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serverOptimizerStreamed, type ServerOptimizerKind, type ServerOptimizerParams } from '../shared/fl/server-optimizer.js';
import type { TensorBlockReader } from '../shared/fl/fedavg.js';
import { createStrategy } from '../aggregator/strategy-registry.js';
import { aggregatorConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { mulberry32 } from '../shared/util/random.js';
import { silentLogger } from '../shared/util/logger.js';

/**
 * The server optimizers (shared/fl/server-optimizer.ts, aggregator/server-optimizer-strategy.ts)
 * against a float64 reference of Reddi et al. 2021 Algorithm 2 written out here, over several
 * rounds and small blocks (block and tensor edges crossed), and their state files: an aggregator
 * that restarts between rounds, or redoes a round, produces the same bytes as one that ran straight.
 */

const tensors = [
  { name: 'a', length: 37 },
  { name: 'b', length: 5 },
];
const total = tensors.reduce((s, t) => s + t.length, 0);
type Model = Record<string, Float32Array>;

function reader(id: string, weight: number, values: Model): TensorBlockReader {
  return { id, weight, read: async (name, start, out) => out.set(values[name]!.subarray(start, start + out.length)) };
}

function randomModel(rng: () => number, scale: number, around?: Model): Model {
  return Object.fromEntries(
    tensors.map((t) => [t.name, Float32Array.from({ length: t.length }, (_, i) => (around ? around[t.name]![i]! : 0) + (rng() - 0.5) * scale)]),
  );
}

/** Round r's clients: three sites moving the model around the base (seeded by the round, so every run sees the same). */
function clientsOf(base: Model, round: number): { id: string; weight: number; model: Model }[] {
  const rng = mulberry32(1000 + round);
  return ['s1', 's2', 's3'].map((id, k) => ({ id, weight: 10 * (k + 1), model: randomModel(rng, 0.2, base) }));
}

function flat(model: Model): Float64Array {
  const out = new Float64Array(total);
  let at = 0;
  for (const t of tensors) for (let i = 0; i < t.length; i++) out[at++] = model[t.name]![i]!;
  return out;
}

/** float64 reference of one round of Algorithm 2 (FedAvgM: m = β m + Δ, x += η m). */
function referenceRound(
  p: ServerOptimizerParams,
  x: Float64Array,
  clients: { weight: number; model: Model }[],
  s: { m: Float64Array; v: Float64Array },
): Float64Array {
  const n = clients.reduce((a, c) => a + c.weight, 0);
  const flats = clients.map((c) => flat(c.model));
  return x.map((xi, i) => {
    const d = clients.reduce((a, c, k) => a + c.weight * flats[k]![i]!, 0) / n - xi;
    if (p.kind === 'fedavgm') {
      s.m[i] = p.beta1 * s.m[i]! + d;
      return xi + p.learningRate * s.m[i]!;
    }
    s.m[i] = p.beta1 * s.m[i]! + (1 - p.beta1) * d;
    if (p.kind === 'fedadam') s.v[i] = p.beta2 * s.v[i]! + (1 - p.beta2) * d * d;
    else s.v[i] = s.v[i]! - (1 - p.beta2) * d * d * Math.sign(s.v[i]! - d * d);
    return xi + (p.learningRate * s.m[i]!) / (Math.sqrt(s.v[i]!) + p.tau);
  });
}

for (const kind of ['fedavgm', 'fedadam', 'fedyogi'] as const) {
  test(`${kind}: three streamed rounds match the float64 reference of Algorithm 2`, async () => {
    // Prepare: a base model, in-memory state between rounds, and the reference's own state.
    const p: ServerOptimizerParams = { kind, learningRate: kind === 'fedavgm' ? 1 : 0.05, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
    let x = randomModel(mulberry32(7), 1);
    let ref = flat(x);
    const refState = { m: new Float64Array(total), v: new Float64Array(total).fill(p.tau * p.tau) };
    let state: Record<string, Float32Array> | null = null;
    for (let round = 1; round <= 3; round++) {
      const clients = clientsOf(x, round);
      const next: Model = Object.fromEntries(tensors.map((t) => [t.name, new Float32Array(t.length).fill(Number.NaN)]));
      const written: Record<string, Float32Array> = {};
      const prev = state;
      // Execute: blocks of 8 elements, so tensor and block edges are crossed.
      await serverOptimizerStreamed(
        p,
        clients.map((c) => reader(c.id, c.weight, c.model)),
        reader('base', 1, x),
        tensors,
        {
          read: prev
            ? async (slot, name, start, out) => {
                out.set(prev[`${slot}:${name}`]!.subarray(start, start + out.length));
                return true;
              }
            : null,
          write: async (slot, name, start, values) => {
            (written[`${slot}:${name}`] ??= new Float32Array(tensors.find((t) => t.name === name)!.length)).set(values, start);
          },
        },
        (name, start, values) => next[name]!.set(values, start),
        8,
      );
      ref = referenceRound(p, ref, clients, refState);
      // Assert: within float32 rounding of the reference, and the model moved.
      const got = flat(next);
      for (let i = 0; i < total; i++)
        assert.ok(Math.abs(got[i]! - ref[i]!) <= 2e-6 * Math.max(1, Math.abs(ref[i]!)), `round ${round} [${i}]: ${got[i]} vs ${ref[i]}`);
      assert.ok(
        got.some((g, i) => g !== flat(x)[i]),
        'the model moved',
      );
      state = written;
      x = next;
    }
  });
}

/** Runs `rounds` rounds of the named strategy from `start` (model versions start..), a fresh strategy instance per `restartAt` as after an aggregator restart. */
async function runRounds(kind: ServerOptimizerKind, stateDir: string, from: Model, rounds: number[], fresh: boolean): Promise<Model> {
  const config = configFor(stateDir, { strategy: kind, maxUpdateNormRatio: null });
  let strategy = createStrategy(config, silentLogger());
  let x = from;
  for (const round of rounds) {
    if (fresh) strategy = createStrategy(config, silentLogger());
    const clients = clientsOf(x, round);
    const next: Model = Object.fromEntries(tensors.map((t) => [t.name, new Float32Array(t.length)]));
    const out = await strategy.aggregate({
      round,
      federated: tensors.map((t) => ({ name: t.name, shape: [t.length] })),
      results: clients.map((c) => reader(c.id, c.weight, c.model)),
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

function configFor(stateDir: string, extra: Record<string, unknown>) {
  const raw = { federation: 'f', mqtt: { url: 'mqtt://127.0.0.1:1' }, stateDir, agents: ['a'], rounds: 1, task: {}, model: { classes: ['A', 'B'] }, ...extra };
  return parseConfig(aggregatorConfigSchema, raw, 'test aggregator config');
}

function bytes(model: Model): Buffer {
  return Buffer.concat(tensors.map((t) => Buffer.from(model[t.name]!.buffer)));
}

for (const kind of ['fedavgm', 'fedadam', 'fedyogi'] as const) {
  test(`${kind}: 3 rounds straight = 2 rounds, restart, 1 round = the round redone after a crash (identical bytes)`, async () => {
    const dirs = await Promise.all([0, 1, 2].map(() => mkdtemp(join(tmpdir(), 'fedline-serveropt-'))));
    try {
      const x0 = randomModel(mulberry32(11), 1);
      // Straight: one strategy instance for rounds 1-3.
      const straight = await runRounds(kind, dirs[0]!, x0, [1, 2, 3], false);
      // Restarted: rounds 1-2, then a new instance (the aggregator restarted) for round 3.
      const two = await runRounds(kind, dirs[1]!, x0, [1, 2], false);
      const restarted = await runRounds(kind, dirs[1]!, two, [3], true);
      assert.ok(bytes(restarted).equals(bytes(straight)), 'restart changed the model');
      // Redone: round 3 aggregated again from the same base (a crash after the state was written, before the model was committed).
      const redone = await runRounds(kind, dirs[1]!, two, [3], true);
      assert.ok(bytes(redone).equals(bytes(straight)), 'redoing a round changed the model');
      // The state matters: without the file of version 3 the same round gives another model.
      await runRounds(kind, dirs[2]!, x0, [1, 2], false);
      await rm(join(dirs[2]!, 'server-optimizer', 'v3.state'));
      const forgotten = await runRounds(kind, dirs[2]!, two, [3], true);
      assert.ok(!bytes(forgotten).equals(bytes(straight)), 'the state file made no difference');
      // Old states are pruned: the base's and the new one stay.
      assert.deepEqual((await readdir(join(dirs[1]!, 'server-optimizer'))).sort(), ['v3.state', 'v4.state']);
    } finally {
      await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
    }
  });
}

test('registry: serverOptimizer defaults are the paper’s, fedprox announces proxMu in the task', () => {
  const config = configFor('/tmp/x', { strategy: 'fedprox', proxMu: 0.1 });
  assert.deepEqual(config.serverOptimizer, { learningRate: null, beta1: 0.9, beta2: 0.99, tau: 1e-3 });
  const round = createStrategy(config, silentLogger()).configureRound({ round: 1, kind: 'train', available: ['a'], trainRoundsBefore: 0 });
  assert.equal(round.task.proxMu, 0.1);
  const plain = createStrategy({ ...config, strategy: 'fedavg' }, silentLogger()).configureRound({
    round: 1,
    kind: 'train',
    available: ['a'],
    trainRoundsBefore: 0,
  });
  assert.equal(plain.task.proxMu, undefined);
});
