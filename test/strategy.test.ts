import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FedAvg } from '../aggregator/fedavg-strategy.js';
import { NormScreen } from '../aggregator/norm-screen.js';
import { RoundState } from '../aggregator/round-state.js';
import type { RoundSetup, Strategy, StrategyInput, StrategyOutput } from '../aggregator/strategy.js';
import { createStrategy } from '../aggregator/strategy-registry.js';
import { aggregatorConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { classificationMetrics } from '../shared/fl/classification-metrics.js';
import type { TensorBlockReader } from '../shared/fl/fedavg.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';

/**
 * The Strategy seam (aggregator/strategy.ts): FedAvg's three hooks (configure a round, aggregate,
 * evaluate), the NormScreen step wrapped around any strategy, and the registry behind the config's
 * `strategy` field. No I/O: updates are in-memory block readers and new weights go to a sink.
 */

const task = {
  epochs: 1,
  batchSize: 8,
  learningRate: 0.1,
  learningRateDecay: 0.5,
  optimizer: 'sgd',
  classWeighting: 'auto',
  sampling: 'shuffle',
  federated: 'all',
} as const;

/** An update (or the base model) whose tensor `w` holds `values`. */
function reader(id: string, weight: number, values: number[]): TensorBlockReader {
  const data = Float32Array.from(values);
  return { id, weight, read: async (_name, start, out) => out.set(data.subarray(start, start + out.length)) };
}

/** A strategy input over tensor `w` (length of the base), collecting what the strategy writes. */
function input(results: TensorBlockReader[], base: number[], minClients = 1): { input: StrategyInput; written: Map<string, Float32Array> } {
  const written = new Map<string, Float32Array>();
  return {
    written,
    input: {
      round: 3,
      federated: [{ name: 'w', shape: [base.length] }],
      results,
      failures: [],
      base: reader('base', 0, base),
      minClients,
      output: (name, start, values) => {
        const t = written.get(name) ?? new Float32Array(base.length);
        t.set(values, start);
        written.set(name, t);
      },
    },
  };
}

/** A strategy that records what reached it and averages nothing. */
class Recorder implements Strategy {
  readonly name = 'recorder';
  seen: StrategyInput | null = null;
  configureRound = (setup: RoundSetup) => new FedAvg(task).configureRound(setup);
  evaluate = () => ({ targetReached: false });
  async aggregate(i: StrategyInput): Promise<StrategyOutput> {
    this.seen = i;
    return { kind: 'weights' };
  }
}

test('FedAvg configures a round: every available agent, the scheduled learning rate', () => {
  // Prepare: two training rounds closed before, learning rate 0.1 halved per round.
  const fedAvg = new FedAvg(task);

  // Execute
  const config = fedAvg.configureRound({ round: 3, kind: 'train', available: ['site-b', 'site-a'], trainRoundsBefore: 2 });

  // Assert: 0.1 * 0.5^2; the decay is server-side and not announced.
  assert.deepEqual(config.selected, ['site-b', 'site-a']);
  assert.equal(config.task.learningRate, 0.025);
  assert.equal('learningRateDecay' in config.task, false);
  assert.equal(config.task.optimizer, 'sgd');
});

test('FedAvg aggregates the sample-weighted mean into the sink; no results: keep', async () => {
  // Prepare: 100 samples at 1, 300 samples at 5.
  const { input: i, written } = input([reader('a', 100, [1, 1]), reader('b', 300, [5, 5])], [0, 0]);

  // Execute
  const out = await new FedAvg(task).aggregate(i);
  const none = await new FedAvg(task).aggregate(input([], [0, 0]).input);

  // Assert: (100*1 + 300*5) / 400 = 4
  assert.deepEqual(out, { kind: 'weights' });
  assert.deepEqual([...written.get('w')!], [4, 4]);
  assert.equal(none.kind, 'keep');
});

test('FedAvg evaluates with the target rule: every selected agent must reach the target', () => {
  // Prepare: site-a classifies its test split perfectly, site-b half right.
  const good = classificationMetrics([0, 1], [0, 1], 2);
  const half = classificationMetrics([0, 1], [0, 0], 2);
  const fedAvg = new FedAvg(task);

  // Execute
  const both = fedAvg.evaluate({ metrics: { 'site-a': good, 'site-b': half }, selected: ['site-a', 'site-b'], targetAccuracy: 0.9 });
  const onlyA = fedAvg.evaluate({ metrics: { 'site-a': good, 'site-b': half }, selected: ['site-a'], targetAccuracy: 0.9 });
  const noTarget = fedAvg.evaluate({ metrics: { 'site-a': good }, selected: ['site-a'], targetAccuracy: null });

  // Assert
  assert.equal(both.targetReached, false);
  assert.equal(onlyA.targetReached, true);
  assert.equal(noTarget.targetReached, false);
});

test('a round decides on the target with the strategy it is given', () => {
  // Prepare: a strategy that declares the target reached whatever the metrics.
  const always = (): boolean => true;
  const plan = { round: 1, kind: 'train' as const, baseVersion: 0, selected: ['a'], minClients: 1, deadlineAt: 1000, startedAt: 0, targetAccuracy: 0.99 };

  // Execute
  const decision = new RoundState(plan, always).decide(0);

  // Assert
  assert.deepEqual(decision, { close: true, outcome: 'target-reached', reason: "base model reaches 0.99 on every agent's local test split" });
});

test('NormScreen refuses an outlier as failure data and hands the others to the inner strategy', async () => {
  // Prepare: three honest changes of about 1, one of 100, from a base of norm 10.
  const inner = new Recorder();
  const screen = new NormScreen(inner, { maxNormRatio: 10, maxNorm: null });
  const results = [reader('a', 1, [10, 1]), reader('b', 1, [10, 1.2]), reader('c', 1, [10, 0.9]), reader('evil', 1, [10, 100])];
  const { input: i } = input(results, [10, 0]);

  // Execute
  const out = await screen.aggregate(i);

  // Assert
  assert.equal(out.kind, 'weights');
  assert.deepEqual(
    out.refused?.map((f) => [f.agent, f.code]),
    [['evil', ErrorCodes.UPDATE_NORM]],
  );
  assert.deepEqual(
    inner.seen?.results.map((r) => r.id),
    ['a', 'b', 'c'],
  );
  assert.deepEqual(
    inner.seen?.failures.map((f) => f.agent),
    ['evil'],
  );
  assert.equal(screen.name, 'norm-screen(recorder)');
});

test('NormScreen keeps the global model when too few updates are left, without calling the inner strategy', async () => {
  // Prepare: two updates, one an outlier, two needed.
  const inner = new Recorder();
  const screen = new NormScreen(inner, { maxNormRatio: 10, maxNorm: null });
  const { input: i } = input([reader('a', 1, [10, 1]), reader('evil', 1, [10, 500])], [10, 0], 2);

  // Execute
  const out = await screen.aggregate(i);

  // Assert
  assert.equal(out.kind, 'keep');
  assert.match(out.kind === 'keep' ? out.reason : '', /1 update\(s\) refused as outliers; 1 left, 2 needed/);
  assert.deepEqual(
    out.refused?.map((f) => f.agent),
    ['evil'],
  );
  assert.equal(inner.seen, null);
});

test('the registry maps the config name to a strategy, screened unless both norm limits are off', () => {
  // Prepare: a minimal aggregator config (strategy left to its default).
  const config = parseConfig(
    aggregatorConfigSchema,
    { federation: 'test', mqtt: { url: 'mqtt://127.0.0.1:1' }, stateDir: 's', agents: ['a'], rounds: 1, task: {}, model: { classes: ['A', 'B'] } },
    'test aggregator config',
  );

  // Execute
  const screened = createStrategy(config, silentLogger());
  const bare = createStrategy({ ...config, maxUpdateNormRatio: null, maxUpdateNorm: null }, silentLogger());
  const unknown = () => createStrategy({ ...config, strategy: 'fedsgd' }, silentLogger());

  // Assert
  assert.equal(config.strategy, 'fedavg');
  assert.equal(screened.name, 'norm-screen(fedavg)');
  assert.equal(bare.name, 'fedavg');
  assert.throws(
    unknown,
    (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.CONFIG_INVALID && /unknown aggregation strategy "fedsgd"; known: fedavg/.test(e.message),
  );
});
