import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FsModelStore } from '../aggregator/model-store.js';
import { experimentConfigSchema } from '../experiment/config.js';
import { runExperiment, runSeeds, seedConfig, type ExperimentResults, type MultiSeedResults } from '../experiment/runner.js';
import { parseConfig } from '../shared/config/config-file.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { tempDir } from './helpers.js';

/**
 * `fedline experiment` with a list of recipes over several seeds: a tiny config (small-cnn, 16 px,
 * 2 seeds, 3 recipes, 2 rounds). The top-level results.json and report.md rank the recipes with
 * mean and spread over the seeds and check the goals; each seed's recipe equals, bit for
 * bit, a single-seed run of that recipe alone with the same seed.
 */

const recipes = [
  { name: 'fedavg-all', federate: 'all' },
  { name: 'fedprox-steps', federate: 'all', strategy: 'fedprox', proxMu: 0.1, localSteps: 6 },
  { name: 'fedavg-head', federate: 'head', sampling: 'balanced', learningRateDecay: 0.5 },
];

const tinyConfig = (out: string, over: Record<string, unknown>) =>
  parseConfig(
    experimentConfigSchema,
    {
      name: 'tiny-recipes',
      out,
      seed: 5,
      data: { source: 'synthetic', size: 16, scale: 0.2 },
      model: { architecture: 'small-cnn', inputShape: [16, 16, 3], seed: 5 },
      pretrained: null,
      training: { epochs: 1, batchSize: 16, learningRate: 0.002, learningRateDecay: 0.9, optimizer: 'adam', decoder: 'js' },
      rounds: 2,
      arms: { centralized: {}, 'local-only': {}, 'federated-all': false, 'federated-head': false, 'federated-random': false },
      recipes,
      ...over,
    },
    'test config',
  );

const finalBytes = async (modelDir: string) =>
  Buffer.concat(
    bundleTensors(decodeBundle(await new FsModelStore(dirname(modelDir)).readBundle(Number(basename(modelDir).slice(1))))).map((t) =>
      Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength),
    ),
  );

test('experiment recipes over two seeds: ranked by mean external balanced accuracy with spread, goals checked, each seed equal to a single-seed run', async () => {
  const dir = tempDir('exp-recipes');
  try {
    // Execute: the three recipes over seeds 5 and 6; then the fedprox recipe alone, seed 6, as a single-seed run.
    const config = tinyConfig(join(dir.path, 'multi'), { seeds: [5, 6] });
    const multi = await runSeeds(config, () => {});
    const single = await runExperiment(
      seedConfig(
        tinyConfig(join(dir.path, 'single'), {
          recipes: [recipes[1]],
          arms: { centralized: false, 'local-only': false, 'federated-all': false, 'federated-head': false, 'federated-random': false },
        }),
        6,
      ),
      () => {},
    );

    // Assert: results.json on disk is what runSeeds returned; three ranked recipes, then the references.
    const onDisk = JSON.parse(readFileSync(join(config.out, 'results.json'), 'utf8')) as MultiSeedResults;
    assert.deepEqual(onDisk.ranking, JSON.parse(JSON.stringify(multi.ranking)));
    assert.deepEqual(multi.seeds, [5, 6]);
    const ranked = multi.ranking.models.filter((m) => m.rank !== null);
    assert.deepEqual(
      ranked.map((m) => m.rank),
      [1, 2, 3],
    );
    assert.deepEqual(ranked.map((m) => m.id).sort(), ['recipe:fedavg-all', 'recipe:fedavg-head', 'recipe:fedprox-steps']);
    for (let i = 1; i < ranked.length; i++) assert.ok(ranked[i - 1]!.score!.mean >= ranked[i]!.score!.mean, 'best first');
    assert.equal(multi.ranking.scoreName, 'external balanced accuracy');
    assert.deepEqual(
      multi.ranking.models.filter((m) => m.rank === null).map((m) => m.kind),
      ['centralized', 'local-only', 'local-only', 'local-only'],
    );

    // Mean and spread are those of the per-seed results.
    const perSeed = [5, 6].map((s) => JSON.parse(readFileSync(join(config.out, `seed-${s}`, 'results.json'), 'utf8')) as ExperimentResults);
    for (const m of ranked) {
      const values = perSeed.map((r) => r.models.find((x) => x.id === m.id)!.eval.external!.balancedAccuracy);
      assert.deepEqual(m.externalBalanced!.values, values);
      assert.ok(Math.abs(m.externalBalanced!.mean - (values[0]! + values[1]!) / 2) < 1e-12);
      assert.ok(Math.abs(m.externalBalanced!.sd - Math.abs(values[0]! - values[1]!) / Math.SQRT2) < 1e-12);
      assert.equal(m.curve.length, 3, 'rounds 0, 1, 2');
      assert.ok(m.maxDecline !== null && m.maxDecline >= 0);
    }
    assert.notDeepEqual(perSeed[0]!.data, perSeed[1]!.data, 'another seed, other images');
    assert.equal(perSeed[1]!.models.find((m) => m.id === 'recipe:fedprox-steps')!.localSteps, 6);
    // A recipe's own learning-rate decay (0.5) replaces training's (0.9) for that recipe only.
    const roundRates = (id: string) => perSeed[1]!.models.find((m) => m.id === id)!.rounds.map((r) => r.learningRate);
    assert.deepEqual(roundRates('recipe:fedavg-head'), [0.002, 0.001]);
    assert.deepEqual(roundRates('recipe:fedavg-all'), [0.002, 0.002 * 0.9]);

    // The goals: seven lines (goal 3 also with false alarms counted, the head goals also jointly), each decided (every arm they need ran), with figures.
    assert.equal(multi.ranking.goals.length, 7);
    for (const g of multi.ranking.goals) assert.equal(typeof g.holds, 'boolean', g.goal);
    assert.equal(multi.ranking.goals[0]!.figures.best, ranked[0]!.id);
    const report = readFileSync(join(config.out, 'report.md'), 'utf8');
    assert.match(report, /## Federated recipes ranked/);
    assert.match(report, /\| 1 \| recipe:\S+ \| (all|head) \| pretrained \| /);
    assert.match(report, /localSteps 6, strategy fedprox, proxMu 0\.1/);
    assert.equal(report.match(/^- \*\*(PASS|FAIL)\*\*: /gm)?.length, 7);
    assert.match(report, /Head-only federation round by round/);
    assert.match(readFileSync(join(config.out, 'seed-5', 'report.md'), 'utf8'), /## Federated recipes ranked/, 'every seed report ranks too');

    // Determinism: seed 6's fedprox recipe equals the single-seed run of that recipe alone.
    const fromMulti = perSeed[1]!.models.find((m) => m.id === 'recipe:fedprox-steps')!;
    const alone = single.models.find((m) => m.id === 'recipe:fedprox-steps')!;
    assert.ok((await finalBytes(fromMulti.modelDir)).equals(await finalBytes(alone.modelDir)), 'same final weights bit for bit');
    assert.deepEqual(fromMulti.eval, alone.eval);
  } finally {
    dir.cleanup();
  }
});

test('experiment config: recipe names must differ, seeds must differ, and runExperiment refuses a config with seeds', async () => {
  assert.throws(() => tinyConfig('/tmp/never', { recipes: [{ name: 'a' }, { name: 'a' }] }), /recipe names must differ/);
  assert.throws(() => tinyConfig('/tmp/never', { seeds: [1, 1] }), /seeds must differ/);
  assert.throws(() => tinyConfig('/tmp/never', { recipes: [{ name: 'a', strategy: 'fedsgd' }] }), /must be one of fedavg/);
  await assert.rejects(
    runExperiment(tinyConfig('/tmp/never', { seeds: [1, 2] }), () => {}),
    /runSeeds/,
  );
});

test('a recipe with localSteps over MQTT (aggregator config, announcement, agent processes) trains bit-identically to in-process, and unlike epochs', async () => {
  const dir = tempDir('exp-recipes-mqtt');
  try {
    // Prepare: one recipe, 3 local steps per round with balanced sampling (the sites have 2-4 batches an epoch).
    const off = { centralized: false, 'local-only': false, 'federated-all': false, 'federated-head': false, 'federated-random': false };
    const stepsRecipe = [{ name: 'steps', localSteps: 3, sampling: 'balanced' }];

    // Execute
    const inProcess = await runExperiment(tinyConfig(join(dir.path, 'in-process'), { arms: off, recipes: stepsRecipe }), () => {});
    const mqtt = await runExperiment(tinyConfig(join(dir.path, 'mqtt'), { arms: off, recipes: stepsRecipe, mode: 'mqtt' }), () => {});
    const epochs = await runExperiment(tinyConfig(join(dir.path, 'epochs'), { arms: off, recipes: [{ name: 'steps', sampling: 'balanced' }] }), () => {});

    // Assert
    const final = (r: ExperimentResults) => finalBytes(r.models.find((m) => m.id === 'recipe:steps')!.modelDir);
    assert.equal(mqtt.models[0]!.roundsRun, 2);
    assert.ok((await final(inProcess)).equals(await final(mqtt)), 'the agents trained the announced 3 steps, as in process');
    assert.ok(!(await final(inProcess)).equals(await final(epochs)), 'steps are not the epoch');
    const aggregatorConfig = readFileSync(join(dir.path, 'mqtt', 'arms', 'recipe-steps', 'mqtt', 'config', 'aggregator.json'), 'utf8');
    assert.match(aggregatorConfig, /"localSteps": 3/, 'the aggregator was configured with the steps');
  } finally {
    dir.cleanup();
  }
});

test('centralized-head: the head alone trained on the pooled images, a reference beside centralized; goal 4 names its score', async () => {
  const dir = tempDir('exp-central-head');
  try {
    // Prepare: centralized (every weight) and centralized-head, and a head-only recipe, on one seed.
    const arms = { centralized: {}, 'centralized-head': {}, 'local-only': false, 'federated-all': false, 'federated-head': false, 'federated-random': false };
    const config = tinyConfig(join(dir.path, 'out'), { arms, recipes: [recipes[0], { name: 'head', federate: 'head' }] });

    // Execute
    const r = await runExperiment(config, () => {});

    // Assert: the base tensors of centralized-head are the common start's, as the federated head's are; its head trained.
    const tensors = async (id: string) => {
      const m = r.models.find((x) => x.id === id)!;
      const bundle = decodeBundle(await new FsModelStore(dirname(m.modelDir)).readBundle(Number(basename(m.modelDir).slice(1))));
      return new Map(bundleTensors(bundle).map((t) => [t.name, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)]));
    };
    const [pooledHead, fedHead, central] = await Promise.all([tensors('centralized-head'), tensors('recipe:head'), tensors('centralized')]);
    const names = [...pooledHead.keys()];
    const head = names.filter((n) => n.startsWith('head_'));
    assert.ok(head.length > 0 && head.length < names.length);
    for (const n of names.filter((x) => !x.startsWith('head_'))) {
      assert.ok(pooledHead.get(n)!.equals(fedHead.get(n)!), `${n}: frozen in centralized-head`);
    }
    assert.ok(
      names.some((n) => !n.startsWith('head_') && !pooledHead.get(n)!.equals(central.get(n)!)),
      'centralized trains the base, centralized-head does not',
    );
    assert.ok(
      head.some((n) => !pooledHead.get(n)!.equals(fedHead.get(n)!)),
      'the pooled head trained otherwise than the federated one',
    );
    const model = r.models.find((m) => m.id === 'centralized-head')!;
    assert.equal(model.federate, 'head');
    assert.equal(model.roundsRun, 2);

    // The ranking: a reference, not ranked and not centralized for goals 1-2; goal 4 reports its score.
    const ranked = r.ranking;
    const ref = ranked.models.find((m) => m.id === 'centralized-head')!;
    assert.equal(ref.kind, 'centralized-head');
    assert.equal(ref.rank, null);
    assert.equal(ranked.goals[0]!.figures.centralized, ranked.models.find((m) => m.id === 'centralized')!.score!.mean);
    const headGap = ranked.goals.find((g) => g.goal.startsWith('the best head-only recipe within'))!;
    assert.equal(headGap.figures.pooledHeadScore, ref.score!.mean);
    assert.match(headGap.detail, /the head on the pooled images \(centralized-head\) \d+\.\d%/);
    const report = readFileSync(join(config.out, 'report.md'), 'utf8');
    assert.match(report, /\| - \| centralized-head \| - \| pretrained \| /);
  } finally {
    dir.cleanup();
  }
});
