import { readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import { loadTf } from '../training/backend.js';
import { type ModelSpec } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { TrainTask } from '../shared/protocol/messages.js';
import { runCentralizedArm, runFederatedArms, runLocalOnlyArms, type ArmContext } from './arms.js';
import { experimentConfigSchema, type ExperimentConfig } from './config.js';
import { dataSummary, defectClassOf, loadData, prepareDataLayout, trainingImageBytes } from './data.js';
import { findings } from './findings.js';
import { adaptBaseToSites, buildInitialModels, needsPretraining, preparePretrained, pretrainedDirOf } from './initial-models.js';
import { ModelResults } from './model-results.js';
import { renderReport } from './report.js';
import { writeReportPictures } from './report-pictures.js';
import type { ExperimentResults, MultiSeedResults } from './results.js';
import { rankInputsOf, rankRuns } from './ranking.js';
import { renderMultiSeedReport } from './ranking-report.js';
import { evaluateModel } from './sets.js';

export type { ExperimentResults, MultiSeedResults } from './results.js';

/**
 * `fedline experiment`: the seed paper's comparison on one set of splits and seeds:
 *   centralized (all sites' training data pooled), local-only (each site alone), federated with
 *   every weight trained and sent (federate all, Process1), federated head only (Process2), and
 *   federated from a random common init; arms 1-4 start from the same pretrained base.
 * Every model is then evaluated on every site's local test split, the external set and the
 * cross-client probes; results.json, report.md and one confusion-matrix PNG per model and test
 * set are written. Federated arms run in this process (simulated agents: experiment/rounds.ts) or
 * over MQTT with real processes (experiment/mqtt-arm.ts); both give the same global weights.
 */

/** Read and validate an experiment config; relative paths are taken from the file's folder. */
export function loadExperimentConfig(file: string): ExperimentConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ? ErrorCodes.CONFIG_READ : ErrorCodes.CONFIG_PARSE;
    throw new FedlineError(code, `cannot read the experiment config ${file}: ${(err as Error).message}`, { file });
  }
  return resolveConfigPaths(parseConfig(experimentConfigSchema, raw, file), dirname(resolve(file)));
}

export function resolveConfigPaths(c: ExperimentConfig, base: string): ExperimentConfig {
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  const data =
    c.data.source === 'folders'
      ? {
          ...c.data,
          sites: Object.fromEntries(Object.entries(c.data.sites).map(([k, v]) => [k, abs(v)])),
          ...(c.data.external ? { external: abs(c.data.external) } : {}),
          ...(c.data.probes ? { probes: Object.fromEntries(Object.entries(c.data.probes).map(([k, v]) => [k, abs(v)])) } : {}),
        }
      : c.data;
  const pretrained = c.pretrained
    ? { ...c.pretrained, ...(c.pretrained.dir ? { dir: abs(c.pretrained.dir) } : {}), ...(c.pretrained.data ? { data: abs(c.pretrained.data) } : {}) }
    : null;
  return { ...c, out: abs(c.out), data, pretrained };
}

/** The config of seed s of a multi-seed run: the single-seed experiment with seed, head init and image order all s, in `<out>/seed-<s>`, sharing one pretrained base. */
export function seedConfig(config: ExperimentConfig, seed: number): ExperimentConfig {
  const { seeds: _all, ...single } = config;
  const pretrainedDir = pretrainedDirOf(config);
  return {
    ...single,
    seed,
    out: join(config.out, `seed-${seed}`),
    model: { ...config.model, seed },
    training: { ...config.training, shuffleSeed: seed },
    pretrained: config.pretrained && pretrainedDir ? { ...config.pretrained, dir: pretrainedDir } : config.pretrained,
  };
}

/**
 * `fedline experiment` over `seeds`: the whole comparison once per seed (seedConfig), then the
 * federated models ranked by their mean over the seeds, with the goals, in `<out>/results.json`
 * and `<out>/report.md`.
 */
export async function runSeeds(config: ExperimentConfig, say: (line: string) => void): Promise<MultiSeedResults> {
  const seeds = config.seeds ?? [config.seed];
  const started = Date.now();
  const runs: MultiSeedResults['runs'] = [];
  const perSeed: ExperimentResults[] = [];
  for (const seed of seeds) {
    say(`==== seed ${seed} (${runs.length + 1} of ${seeds.length})`);
    const t0 = Date.now();
    const c = seedConfig(config, seed);
    perSeed.push(await runExperiment(c, say));
    runs.push({ seed, dir: c.out, durationMs: Date.now() - t0 });
  }
  const results: MultiSeedResults = {
    name: config.name,
    seeds,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    config,
    runs,
    ranking: rankRuns(rankInputsOf(perSeed), config.goals),
  };
  await writeFile(join(config.out, 'results.json'), JSON.stringify(results, null, 2) + '\n');
  await writeFile(
    join(config.out, 'report.md'),
    renderMultiSeedReport(results, perSeed[0]!.defectClass, (p) => relative(config.out, p) || '.'),
  );
  return results;
}

export async function runExperiment(config: ExperimentConfig, say: (line: string) => void): Promise<ExperimentResults> {
  if (config.seeds)
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, 'runExperiment runs one seed; a config with `seeds` runs with runSeeds', { seeds: config.seeds });
  const started = Date.now();
  const out = config.out;
  await mkdir(out, { recursive: true });
  for (const d of ['arms', 'confusion']) await rm(join(out, d), { recursive: true, force: true });

  // ---- data
  const pretrainedDir = pretrainedDirOf(config);
  const needPretraining = needsPretraining(config, pretrainedDir);
  const layout = await prepareDataLayout(config, needPretraining, say);
  const { sites, classes } = layout;
  const { defectClass, defectIndex } = defectClassOf(config, classes);
  const runtime = await loadTf(config.training.backend);
  const { tf } = runtime;
  say(`tfjs backend: ${runtime.backend}; mode: ${config.mode}`);
  const data = await loadData(config, layout, say);

  // ---- model and the common initial weights
  const spec: ModelSpec = { ...config.model, normalization: config.model.normalization ?? 'per-image', classes };
  const pretrained = await preparePretrained(config, spec, pretrainedDir, needPretraining, layout.referenceDir, say);
  const trainerOptions = { shuffleSeed: config.training.shuffleSeed, augmentation: config.training.augmentation };
  const siteList = sites.map((s) => ({ id: s.id, data: data.siteData.get(s.id)! }));
  const selfSupervised = await adaptBaseToSites(config, runtime, spec, pretrainedDir, siteList, trainerOptions, say);
  const initial = await buildInitialModels(tf, spec, selfSupervised?.dir ?? pretrainedDir);

  // ---- the arms
  const trainers = new Map(sites.map((s) => [s.id, new TfjsTrainer(runtime, data.siteData.get(s.id)!, trainerOptions)]));
  const baseTask: Omit<TrainTask, 'federated'> = {
    epochs: config.training.epochs,
    batchSize: config.training.batchSize,
    learningRate: config.training.learningRate,
    optimizer: config.training.optimizer,
    classWeighting: config.training.classWeighting,
    sampling: config.training.sampling,
  };
  // The learning curves: every round's base model on the sets no site trains on.
  const heldOutSets = data.allSets.filter((s) => s.id === 'external' || s.id === 'probes');
  const results = new ModelResults({ tf, out, experimentName: config.name, spec, classes, allSets: data.allSets, siteTests: data.siteTests, say });
  const ctx: ArmContext = {
    config,
    runtime,
    sites,
    siteIds: sites.map((s) => s.id),
    siteData: data.siteData,
    pooled: data.pooled,
    trainers,
    trainerOptions,
    baseTask,
    spec,
    initial,
    imagesBytes: await trainingImageBytes(sites, data),
    siteEvaluator: (model) =>
      evaluateModel(tf, model, data.siteTests).then((m) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k.slice('site:'.length), v]))),
    watchEvaluator: heldOutSets.length ? (model) => evaluateModel(tf, model, heldOutSets) : undefined,
    results,
    say,
  };
  await runCentralizedArm(ctx);
  await runLocalOnlyArms(ctx);
  await runFederatedArms(ctx);

  // ---- results.json and report.md
  const models = results.models;
  const experiment: ExperimentResults = {
    name: config.name,
    mode: config.mode,
    backend: runtime.backend,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    classes,
    defectClass,
    targetAccuracy: config.targetAccuracy,
    config,
    data: dataSummary(layout, data),
    pretrained,
    selfSupervised,
    models,
    findings: findings(models, sites, layout.probes, defectIndex),
    ranking: rankRuns([{ seed: config.seed, models, sites, probes: layout.probes, defectIndex }], config.goals),
  };
  await writeFile(join(out, 'results.json'), JSON.stringify(experiment, null, 2) + '\n');
  const pictures = await writeReportPictures(experiment, out);
  await writeFile(
    join(out, 'report.md'),
    renderReport(experiment, (p) => relative(out, p) || '.', pictures),
  );
  return experiment;
}
