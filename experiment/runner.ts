import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { FsModelStore } from '../aggregator/model-store.js';
import { PRETRAIN_INFO_FILE, pretrainBase } from '../training/pretrain.js';
import { generateExperimentData, INSPECTION_CLASSES, type ExperimentPart } from '../synthetic-data/generate.js';
import { loadDataset, loadImageSet, type ImageSet, type LocalDataset } from '../training/image-folder.js';
import { createImageDecoder } from '../training/images.js';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import type { GlobalModel } from '../training/trainer.js';
import { parseConfig, type ModelSpec } from '../shared/config/service-config.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { modelMetaSchema, type EvalMetrics, type ModelMeta, type TrainTask } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle, encodeBundle } from '../shared/bundle/tensor-bundle.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { experimentConfigSchema, type ArmName, type ExperimentConfig } from './config.js';
import { renderConfusionPng } from './confusion-png.js';
import { runFederatedArmOverMqtt } from './mqtt-arm.js';
import { renderReport } from './report.js';
import { roundsToTarget, runRounds, type Participant, type RoundRecord } from './rounds.js';
import { concatImageSets, evaluateModel, pooledDataset } from './sets.js';

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

export interface Site {
  id: string;
  dir: string;
}

export interface Probe {
  id: string;
  dir: string;
  /** The site whose product it shows, and the site whose defect it carries (when known). */
  product: string | null;
  defectOf: string | null;
}

export interface ModelResult {
  /** centralized, local-only:<site>, federated-all, federated-head, federated-random */
  id: string;
  arm: ArmName;
  site: string | null;
  init: 'pretrained' | 'random';
  federate: 'all' | 'head';
  rounds: RoundRecord[];
  roundsRun: number;
  epochsPerRound: number;
  reason: string;
  /** The first round after which the model met the target on every site it is judged on (0: before training), or null. */
  roundsToTarget: number | null;
  /** Sites whose test splits decide "target reached". */
  targetSites: string[];
  bytes: { upPerRound: number; downPerRound: number; total: number; imagesMoved: number };
  /** Mean local training time per epoch and site, ms (as the trainer reports it). */
  msPerLocalEpoch: number | null;
  /** Test set id -> metrics: local-test (every site's test split pooled), site:<id>, external, probes, probe:<id>. */
  eval: Record<string, EvalMetrics>;
  confusionPngs: Record<string, string>;
  modelDir: string;
}

export interface Finding {
  claim: string;
  holds: boolean | null;
  detail: string;
}

export interface ExperimentResults {
  name: string;
  mode: 'in-process' | 'mqtt';
  backend: string;
  startedAt: string;
  durationMs: number;
  classes: string[];
  defectClass: string | null;
  targetAccuracy: number | null;
  config: ExperimentConfig;
  data: {
    sites: Record<string, { dir: string; train: number[]; test: number[] }>;
    external: { dir: string; count: number; perClass: number[] } | null;
    probes: Record<string, { dir: string; count: number; product: string | null; defectOf: string | null }>;
  };
  pretrained: { dir: string; reused: boolean; info: Record<string, unknown> | null } | null;
  models: ModelResult[];
  findings: Finding[];
}

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
  const pretrained = c.pretrained ? { ...c.pretrained, ...(c.pretrained.dir ? { dir: abs(c.pretrained.dir) } : {}), ...(c.pretrained.data ? { data: abs(c.pretrained.data) } : {}) } : null;
  return { ...c, out: abs(c.out), data, pretrained };
}

const safeName = (id: string) => id.replace(/[^A-Za-z0-9_.-]+/g, '-');

async function filesBytes(set: ImageSet): Promise<number> {
  let n = 0;
  for (const p of set.paths) n += (await stat(p)).size;
  return n;
}

/** Recall of one class pooled over several confusion matrices (null when none of them has that class). */
export function pooledRecall(metrics: readonly EvalMetrics[], cls: number): number | null {
  let hit = 0;
  let total = 0;
  for (const m of metrics) {
    const row = m.confusion[cls];
    if (!row) continue;
    hit += row[cls] ?? 0;
    total += row.reduce((s, v) => s + v, 0);
  }
  return total > 0 ? hit / total : null;
}

export async function runExperiment(config: ExperimentConfig, say: (line: string) => void): Promise<ExperimentResults> {
  const started = Date.now();
  const out = config.out;
  await mkdir(out, { recursive: true });
  for (const d of ['arms', 'confusion']) await rm(join(out, d), { recursive: true, force: true });

  // ---- data
  let sites: Site[];
  let external: string | null = null;
  let probes: Probe[] = [];
  let classes: string[];
  const pretrainedDir = config.pretrained ? (config.pretrained.dir ?? join(out, `pretrained-${config.model.architecture}${config.model.batchNorm ? '-bn' : ''}-w${config.model.width}-${config.model.inputShape[0]}px`)) : null;
  const needPretraining = config.pretrained !== null && !existsSync(join(pretrainedDir!, 'model.json'));
  let referenceDir = config.pretrained?.data ?? null;
  if (config.data.source === 'synthetic') {
    const seed = config.data.seed ?? config.seed;
    const dataDir = join(out, 'data');
    await rm(dataDir, { recursive: true, force: true });
    const parts: ExperimentPart[] = ['clients', 'external', 'probes'];
    if (needPretraining && !referenceDir) parts.push('reference');
    const t0 = Date.now();
    const gen = await generateExperimentData({ out: dataDir, seed, size: config.data.size, scale: config.data.scale, parts });
    say(`generated ${gen.files} images (${config.data.size}x${config.data.size} px, seed ${seed}, scale ${config.data.scale}) in ${dataDir} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    sites = gen.clients.map((c) => ({ id: c.name, dir: c.dir }));
    external = gen.external?.dir ?? null;
    probes = gen.probes.map((p) => ({ id: p.name, dir: p.dir, product: p.client, defectOf: p.defectOf }));
    classes = [...INSPECTION_CLASSES];
    if (gen.reference) referenceDir = gen.reference.dir;
  } else {
    const d = config.data;
    sites = Object.entries(d.sites).map(([id, dir]) => ({ id, dir }));
    external = d.external ?? null;
    probes = Object.entries(d.probes ?? {}).map(([id, dir]) => ({ id, dir, product: d.probeSites?.[id]?.product ?? null, defectOf: d.probeSites?.[id]?.defectOf ?? null }));
    classes = [...d.classes];
    for (const p of probes) {
      for (const s of [p.product, p.defectOf]) if (s !== null && !sites.some((x) => x.id === s)) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `probe ${p.id}: site "${s}" is not one of data.sites (${sites.map((x) => x.id).join(', ')})`);
    }
  }
  const defectClass = config.defectClass === undefined ? (classes.includes('NOT_OKAY') ? 'NOT_OKAY' : null) : config.defectClass;
  if (defectClass !== null && !classes.includes(defectClass)) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `defectClass "${defectClass}" is not one of the classes (${classes.join(', ')})`);
  const defectIndex = defectClass === null ? -1 : classes.indexOf(defectClass);

  const runtime = await loadTf(config.training.backend);
  const { tf } = runtime;
  say(`tfjs backend: ${runtime.backend}; mode: ${config.mode}`);
  const decoder = await createImageDecoder(config.training.decoder);
  const inputShape = config.model.inputShape as [number, number, number];
  const splitSeed = config.splitSeed ?? config.seed;
  const cacheBytes = config.training.cacheMB * 1024 * 1024;
  // The agents' own loading: same folder, classes, split fraction and seed, decoder.
  const siteData = new Map<string, LocalDataset>();
  for (const s of sites) {
    const data = await loadDataset({ dir: s.dir, classes, inputShape, testFraction: config.testFraction, splitSeed, cacheBytes, decoder });
    for (const p of data.problems.slice(0, 20)) say(`  ${s.id}: ${p}`);
    siteData.set(s.id, data);
    say(`  ${s.id}: train ${data.counts.train.join('/')} test ${data.counts.test.join('/')} (${classes.join('/')})`);
  }
  const evalSets: { id: string; set: ImageSet }[] = [];
  const extra = async (id: string, dir: string) => {
    const { set, problems } = await loadImageSet({ dir, classes, inputShape, cacheBytes, decoder });
    for (const p of problems.slice(0, 20)) say(`  ${id}: ${p}`);
    evalSets.push({ id, set });
    return set;
  };
  const externalSet = external ? await extra('external', external) : null;
  const probeSets = new Map<string, ImageSet>();
  for (const p of probes) probeSets.set(p.id, await extra(`probe:${p.id}`, p.dir));
  const pooled = pooledDataset(sites.map((s) => siteData.get(s.id)!));
  const siteTests = sites.map((s) => ({ id: `site:${s.id}`, set: siteData.get(s.id)!.test }));
  const allSets = [{ id: 'local-test', set: pooled.test }, ...siteTests, ...evalSets];
  if (probeSets.size > 0) {
    allSets.push({ id: 'probes', set: concatImageSets([...probeSets.values()]) });
  }

  // ---- model and the common initial weights
  const spec: ModelSpec = { ...config.model, normalization: config.model.normalization ?? 'per-image', classes };
  let pretrainedInfo: ExperimentResults['pretrained'] = null;
  if (config.pretrained && pretrainedDir) {
    const infoFile = join(pretrainedDir, PRETRAIN_INFO_FILE);
    if (!needPretraining) {
      const info = existsSync(infoFile) ? (JSON.parse(await readFile(infoFile, 'utf8')) as Record<string, unknown>) : null;
      say(`pretrained base: reusing ${pretrainedDir}${info ? ` (made ${String(info.createdAt)}, accuracy ${Number((info.metrics as EvalMetrics | undefined)?.accuracy ?? NaN).toFixed(3)} on held-out reference images)` : ''}`);
      pretrainedInfo = { dir: pretrainedDir, reused: true, info };
    } else {
      if (!referenceDir) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `pretrained: ${pretrainedDir} has no model.json; give pretrained.data (reference images) to make one, or pretrained: null`);
      say(`pretrained base: training a ${spec.architecture} on the reference images in ${referenceDir} (${config.pretrained.epochs} epochs)`);
      const r = await pretrainBase({
        dataDir: referenceDir,
        model: spec,
        epochs: config.pretrained.epochs,
        batchSize: config.pretrained.batchSize,
        learningRate: config.pretrained.learningRate,
        init: config.pretrained.init,
        out: pretrainedDir,
        onEpoch: (e, loss) => say(`  pretrain epoch ${e + 1}/${config.pretrained!.epochs}: loss ${loss?.toFixed(4) ?? '-'}`),
      });
      const info = JSON.parse(await readFile(infoFile, 'utf8')) as Record<string, unknown>;
      say(`pretrained base: accuracy ${r.metrics.accuracy.toFixed(3)} on held-out reference images, ${(r.trainMs / 1000).toFixed(1)} s; saved in ${pretrainedDir}`);
      pretrainedInfo = { dir: pretrainedDir, reused: false, info };
    }
  }
  const toModel = (bundle: Uint8Array): GlobalModel => {
    const d = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
    return { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
  };
  const pretrainedSpec: ModelSpec = pretrainedDir ? { ...spec, initFrom: pretrainedDir } : spec;
  const initial = { pretrained: toModel(await buildInitialBundle(tf, pretrainedSpec)), random: toModel(await buildInitialBundle(tf, spec)) };

  const trainerOptions = { shuffleSeed: config.training.shuffleSeed, augmentation: config.training.augmentation };
  const trainers = new Map(sites.map((s) => [s.id, new TfjsTrainer(runtime, siteData.get(s.id)!, trainerOptions)]));
  const baseTask: Omit<TrainTask, 'federated'> = {
    epochs: config.training.epochs,
    batchSize: config.training.batchSize,
    learningRate: config.training.learningRate,
    optimizer: config.training.optimizer,
    classWeighting: config.training.classWeighting,
    sampling: config.training.sampling,
  };
  const siteIds = sites.map((s) => s.id);
  const models: ModelResult[] = [];
  const imagesBytes = new Map<string, number>();
  for (const s of sites) imagesBytes.set(s.id, await filesBytes(siteData.get(s.id)!.train));

  const finish = async (m: Omit<ModelResult, 'eval' | 'confusionPngs' | 'msPerLocalEpoch'>, final: GlobalModel): Promise<void> => {
    const evals = await evaluateModel(tf, final, allSets);
    const confusionPngs: Record<string, string> = {};
    await mkdir(join(out, 'confusion'), { recursive: true });
    for (const id of ['local-test', ...siteTests.map((s) => s.id), 'external', 'probes']) {
      const e = evals[id];
      if (!e) continue;
      const file = join('confusion', `${safeName(m.id)}--${safeName(id)}.png`);
      await writeFile(join(out, file), renderConfusionPng({ title: `${m.id} on ${id}`, subtitle: `${config.name}: ${spec.architecture}, ${m.roundsRun} rounds x ${m.epochsPerRound} epochs`, classes, confusion: e.confusion }));
      confusionPngs[id] = file;
    }
    const perEpoch = m.rounds.flatMap((r) => Object.values(r.trainMs).map((ms) => ms / m.epochsPerRound));
    const result: ModelResult = { ...m, eval: evals, confusionPngs, msPerLocalEpoch: perEpoch.length ? perEpoch.reduce((a, b) => a + b, 0) / perEpoch.length : null };
    models.push(result);
    const acc = (id: string) => (evals[id] ? evals[id]!.accuracy.toFixed(3) : '-');
    say(`  ${m.id}: local test ${acc('local-test')}, external ${acc('external')}, probes ${acc('probes')}, rounds to target ${m.roundsToTarget ?? '-'}`);
  };
  const saveModel = async (dir: string, final: GlobalModel): Promise<string> => {
    const store = new FsModelStore(dir);
    await rm(dir, { recursive: true, force: true });
    const stored = await store.save(encodeBundle(final.tensors, final.meta));
    return store.dir(stored.version);
  };
  const armSettings = (name: ArmName) => {
    const a = config.arms[name];
    if (a === false) return null;
    return { rounds: a.rounds ?? config.rounds, epochs: a.epochs ?? config.training.epochs, learningRate: a.learningRate ?? config.training.learningRate };
  };
  const progress = (label: string) => (r: RoundRecord) => {
    const accs = Object.entries(r.baseMetrics).map(([k, v]) => `${k} ${v.accuracy.toFixed(3)}`).join(', ');
    say(`  ${label} round ${r.round}: model v${r.baseVersion} before training: ${accs}; lr ${r.learningRate.toPrecision(3)}${Object.keys(r.trainMs).length ? `, ${(Math.max(...Object.values(r.trainMs)) / 1000).toFixed(1)} s training` : ''}`);
  };
  const siteEvaluator = (model: GlobalModel) => evaluateModel(tf, model, siteTests).then((m) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k.slice('site:'.length), v])));

  // ---- 1. centralized
  const central = armSettings('centralized');
  if (central) {
    say(`centralized: every site's training images pooled (${pooled.train.count}), ${central.rounds} rounds x ${central.epochs} epochs`);
    const trainer = new TfjsTrainer(runtime, pooled, trainerOptions);
    const run = await runRounds({
      initial: initial.pretrained,
      rounds: central.rounds,
      task: { ...baseTask, epochs: central.epochs, learningRate: central.learningRate },
      learningRateDecay: config.training.learningRateDecay,
      federate: 'all',
      participants: [{ id: 'pooled', trainer }],
      federated: false,
      targetAccuracy: config.targetAccuracy,
      stopAtTarget: false,
      evaluate: siteEvaluator,
      onRound: progress('centralized'),
    });
    const moved = [...imagesBytes.values()].reduce((a, b) => a + b, 0);
    await finish(
      {
        id: 'centralized',
        arm: 'centralized',
        site: null,
        init: 'pretrained',
        federate: 'all',
        rounds: run.rounds,
        roundsRun: run.rounds.length,
        epochsPerRound: central.epochs,
        reason: run.reason,
        roundsToTarget: roundsToTarget(run.rounds, run.finalMetrics, siteIds, config.targetAccuracy),
        targetSites: siteIds,
        bytes: { upPerRound: 0, downPerRound: 0, total: moved, imagesMoved: moved },
        modelDir: await saveModel(join(out, 'arms', 'centralized', 'models'), run.final),
      },
      run.final,
    );
  }

  // ---- 2. local-only
  const local = armSettings('local-only');
  if (local) {
    for (const s of sites) {
      say(`local-only ${s.id}: its own ${siteData.get(s.id)!.train.count} training images, ${local.rounds} rounds x ${local.epochs} epochs`);
      const run = await runRounds({
        initial: initial.pretrained,
        rounds: local.rounds,
        task: { ...baseTask, epochs: local.epochs, learningRate: local.learningRate },
        learningRateDecay: config.training.learningRateDecay,
        federate: 'all',
        participants: [{ id: s.id, trainer: trainers.get(s.id)! }],
        federated: false,
        targetAccuracy: config.targetAccuracy,
        stopAtTarget: false,
        onRound: progress(`local-only ${s.id}`),
      });
      await finish(
        {
          id: `local-only:${s.id}`,
          arm: 'local-only',
          site: s.id,
          init: 'pretrained',
          federate: 'all',
          rounds: run.rounds,
          roundsRun: run.rounds.length,
          epochsPerRound: local.epochs,
          reason: run.reason,
          roundsToTarget: roundsToTarget(run.rounds, run.finalMetrics, [s.id], config.targetAccuracy),
          targetSites: [s.id],
          bytes: { upPerRound: 0, downPerRound: 0, total: 0, imagesMoved: 0 },
          modelDir: await saveModel(join(out, 'arms', 'local-only', s.id, 'models'), run.final),
        },
        run.final,
      );
    }
  }

  // ---- 3-5. federated
  const federatedArms: { name: ArmName; federate: 'all' | 'head'; init: 'pretrained' | 'random' }[] = [
    { name: 'federated-all', federate: 'all', init: 'pretrained' },
    { name: 'federated-head', federate: 'head', init: 'pretrained' },
    { name: 'federated-random', federate: 'all', init: 'random' },
  ];
  for (const arm of federatedArms) {
    const settings = armSettings(arm.name);
    if (!settings) continue;
    const task = { ...baseTask, epochs: settings.epochs, learningRate: settings.learningRate };
    say(`${arm.name}: ${sites.length} sites, federate ${arm.federate}, ${arm.init} init, ${settings.rounds} rounds x ${settings.epochs} local epochs (${config.mode})`);
    let run: { rounds: RoundRecord[]; final: GlobalModel; finalMetrics: Record<string, EvalMetrics>; reason: string };
    let modelDir: string;
    if (config.mode === 'mqtt') {
      const r = await runFederatedArmOverMqtt({
        dir: join(out, 'arms', arm.name, 'mqtt'),
        federation: `experiment-${arm.name}`,
        sites,
        rounds: settings.rounds,
        task,
        learningRateDecay: config.training.learningRateDecay,
        federate: arm.federate,
        model: arm.init === 'pretrained' ? pretrainedSpec : spec,
        targetAccuracy: config.stopAtTarget ? config.targetAccuracy : null,
        data: { testFraction: config.testFraction, splitSeed, cacheMB: config.training.cacheMB, decoder: config.training.decoder, augmentation: config.training.augmentation },
        training: { backend: config.training.backend, shuffleSeed: config.training.shuffleSeed },
        chunkBytes: config.mqtt.chunkBytes,
        roundDeadlineMs: config.mqtt.roundDeadlineMs,
        say,
      });
      for (const rec of r.rounds) progress(arm.name)(rec);
      run = r;
      modelDir = r.finalDir;
    } else {
      const participants: Participant[] = sites.map((s) => ({ id: s.id, trainer: trainers.get(s.id)! }));
      run = await runRounds({
        initial: arm.init === 'pretrained' ? initial.pretrained : initial.random,
        rounds: settings.rounds,
        task,
        learningRateDecay: config.training.learningRateDecay,
        federate: arm.federate,
        participants,
        federated: true,
        targetAccuracy: config.targetAccuracy,
        stopAtTarget: config.stopAtTarget,
        onRound: progress(arm.name),
      });
      modelDir = await saveModel(join(out, 'arms', arm.name, 'models'), run.final);
    }
    const trained = run.rounds.filter((r) => r.newVersion !== null);
    const up = trained.reduce((s, r) => s + r.bytesUp, 0);
    const down = run.rounds.reduce((s, r) => s + r.bytesDown, 0);
    await finish(
      {
        id: arm.name,
        arm: arm.name,
        site: null,
        init: arm.init,
        federate: arm.federate,
        rounds: run.rounds,
        roundsRun: trained.length,
        epochsPerRound: settings.epochs,
        reason: run.reason,
        roundsToTarget: roundsToTarget(run.rounds, run.finalMetrics, siteIds, config.targetAccuracy),
        targetSites: siteIds,
        bytes: { upPerRound: trained.length ? up / trained.length : 0, downPerRound: trained.length ? down / trained.length : 0, total: up + down, imagesMoved: 0 },
        modelDir,
      },
      run.final,
    );
  }

  const results: ExperimentResults = {
    name: config.name,
    mode: config.mode,
    backend: runtime.backend,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    classes,
    defectClass,
    targetAccuracy: config.targetAccuracy,
    config,
    data: {
      sites: Object.fromEntries(sites.map((s) => [s.id, { dir: s.dir, train: siteData.get(s.id)!.counts.train, test: siteData.get(s.id)!.counts.test }])),
      external: externalSet && external ? { dir: external, count: externalSet.count, perClass: classes.map((_, c) => externalSet.labels.filter((l) => l === c).length) } : null,
      probes: Object.fromEntries(probes.map((p) => [p.id, { dir: p.dir, count: probeSets.get(p.id)!.count, product: p.product, defectOf: p.defectOf }])),
    },
    pretrained: pretrainedInfo,
    models,
    findings: findings(models, sites, probes, defectIndex),
  };
  await writeFile(join(out, 'results.json'), JSON.stringify(results, null, 2) + '\n');
  await writeFile(join(out, 'report.md'), renderReport(results, (p) => relative(out, p) || '.'));
  return results;
}

/** "Other clients' defects" for a site: the defect images of the other sites' test splits and the probes whose defect is not this site's own. */
export function foreignDefectSets(site: string, sites: readonly Site[], probes: readonly Probe[]): string[] {
  return [...sites.filter((s) => s.id !== site).map((s) => `site:${s.id}`), ...probes.filter((p) => p.defectOf !== null && p.defectOf !== site).map((p) => `probe:${p.id}`)];
}

/** The paper's qualitative findings, checked on these results. */
export function findings(models: readonly ModelResult[], sites: readonly Site[], probes: readonly Probe[], defectIndex: number): Finding[] {
  const by = (id: string) => models.find((m) => m.id === id);
  const out: Finding[] = [];
  const fed = by('federated-all');
  const central = by('centralized');
  const pct = (x: number | null | undefined) => (x === null || x === undefined ? '-' : `${(100 * x).toFixed(1)}%`);
  if (fed && central) {
    const a = fed.eval['local-test']!.accuracy;
    const b = central.eval['local-test']!.accuracy;
    out.push({ claim: 'federated (full fine-tune) is close to centralized on the local test splits (within 5 points)', holds: Math.abs(a - b) <= 0.05, detail: `federated-all ${pct(a)}, centralized ${pct(b)}` });
  }
  const locals = models.filter((m) => m.arm === 'local-only');
  if (fed && locals.length > 0 && defectIndex >= 0) {
    const parts = locals.map((l) => {
      const sets = foreignDefectSets(l.site!, sites, probes);
      const mine = pooledRecall(sets.map((s) => l.eval[s]!).filter(Boolean), defectIndex);
      const theirs = pooledRecall(sets.map((s) => fed.eval[s]!).filter(Boolean), defectIndex);
      return { site: l.site!, local: mine, fed: theirs, wins: mine !== null && theirs !== null && theirs > mine };
    });
    out.push({
      claim: "federated beats every local-only model on other clients' defects (defect recall on the other sites' test splits and the probes with a foreign defect)",
      holds: parts.every((p) => p.wins),
      detail: parts.map((p) => `${p.site}'s foreign defects: federated-all ${pct(p.fed)} vs local-only:${p.site} ${pct(p.local)}`).join('; '),
    });
  }
  const head = by('federated-head');
  if (fed && head && fed.eval.external && head.eval.external) {
    const a = fed.eval.external.accuracy;
    const b = head.eval.external.accuracy;
    out.push({ claim: 'full fine-tune beats head-only on the external set', holds: a > b, detail: `federated-all ${pct(a)}, federated-head ${pct(b)} (balanced ${pct(fed.eval.external.balancedAccuracy)} vs ${pct(head.eval.external.balancedAccuracy)})` });
  }
  const random = by('federated-random');
  if (fed && random) {
    out.push({
      claim: 'a random common init learns far more slowly than a pretrained one (the paper: no progress before ~20 rounds)',
      holds: random.eval['local-test']!.accuracy < fed.eval['local-test']!.accuracy - 0.05,
      detail: `after ${random.roundsRun} rounds: federated-random ${pct(random.eval['local-test']!.accuracy)} vs federated-all ${pct(fed.eval['local-test']!.accuracy)}; rounds to target ${random.roundsToTarget ?? 'not reached'} vs ${fed.roundsToTarget ?? 'not reached'}`,
    });
  }
  return out;
}

