import { join } from 'node:path';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { TfRuntime } from '../training/backend.js';
import type { LocalDataset } from '../training/image-folder.js';
import { TfjsTrainer, type TrainerOptions } from '../training/tfjs-trainer.js';
import type { GlobalModel } from '../training/trainer.js';
import { serverOptimizerSchema, type ModelSpec } from '../shared/config/service-config.js';
import type { EvalMetrics, TrainTask } from '../shared/protocol/messages.js';
import type { ArmName, ArmOptions, ExperimentConfig, Recipe } from './config.js';
import type { InitialModels } from './initial-models.js';
import { saveModel, type ModelResults } from './model-results.js';
import { runFederatedArmOverMqtt } from './mqtt-arm.js';
import type { Site } from './results.js';
import { roundsToTarget, runRounds, type ArmStrategy, type Participant, type RoundRecord } from './rounds.js';
import type { BatchNormMode } from './batch-norm-rounds.js';

/**
 * The arms of the comparison: centralized (every site's training images pooled), local-only (each
 * site alone) and the three federated arms (in this process, or over MQTT with real processes).
 * Each trains in rounds on the same schedule and hands its final model to ModelResults.
 */

export interface ArmContext {
  config: ExperimentConfig;
  runtime: TfRuntime;
  sites: readonly Site[];
  siteIds: string[];
  siteData: ReadonlyMap<string, LocalDataset>;
  pooled: LocalDataset;
  /** One trainer per site, shared by the local-only and in-process federated arms. */
  trainers: ReadonlyMap<string, TfjsTrainer>;
  trainerOptions: TrainerOptions;
  baseTask: Omit<TrainTask, 'federated'>;
  spec: ModelSpec;
  initial: InitialModels;
  /** Bytes of each site's training image files. */
  imagesBytes: ReadonlyMap<string, number>;
  /** The global model on every site's test split, keyed by site id. */
  siteEvaluator: (model: GlobalModel) => Promise<Record<string, EvalMetrics>>;
  /** The held-out sets (external, probes) every round's base model is judged on too: the learning curves. */
  watchEvaluator?: (model: GlobalModel) => Promise<Record<string, EvalMetrics>>;
  results: ModelResults;
  say: (line: string) => void;
}

interface ArmSettings {
  rounds: number;
  epochs: number;
  /** Optimizer steps per round instead of epochs, or null (epochs). */
  localSteps: number | null;
  learningRate: number;
  /** Round r's learning rate is learningRate * learningRateDecay^(r-1). */
  learningRateDecay: number;
  sampling: 'shuffle' | 'balanced';
  strategy: ArmStrategy;
  /** Federated arms: one run per mode. */
  batchNorm: BatchNormMode[];
  statisticsPasses: number;
}

/** One arm's settings: its own options over the shared `training` and `rounds` (the fixed arms' overrides and the recipes alike). */
export function armSettings(config: ExperimentConfig, a: ArmOptions): ArmSettings {
  return {
    rounds: a.rounds ?? config.rounds,
    epochs: a.epochs ?? config.training.epochs,
    localSteps: a.localSteps === undefined ? (config.training.localSteps ?? null) : a.localSteps,
    learningRate: a.learningRate ?? config.training.learningRate,
    learningRateDecay: a.learningRateDecay ?? config.training.learningRateDecay,
    sampling: a.sampling ?? config.training.sampling,
    strategy: {
      strategy: a.strategy ?? 'fedavg',
      proxMu: a.proxMu ?? 0.01,
      serverOptimizer: a.serverOptimizer ?? serverOptimizerSchema.parse({}),
    },
    batchNorm: a.batchNorm === undefined ? ['average'] : typeof a.batchNorm === 'string' ? [a.batchNorm] : [...new Set(a.batchNorm)],
    statisticsPasses: a.statisticsPasses ?? 1,
  };
}

const fixedArmSettings = (config: ExperimentConfig, name: ArmName): ArmSettings | null => {
  const a = config.arms[name];
  return a === false ? null : armSettings(config, a);
};

/** The task of an arm's rounds (the learning rate is round 1's; runRounds applies the schedule). */
function armTask(ctx: ArmContext, settings: ArmSettings): Omit<TrainTask, 'federated'> {
  return {
    ...ctx.baseTask,
    epochs: settings.epochs,
    ...(settings.localSteps === null ? {} : { localSteps: settings.localSteps }),
    learningRate: settings.learningRate,
    sampling: settings.sampling,
  };
}

const progress = (say: (line: string) => void, label: string) => (r: RoundRecord) => {
  const accs = Object.entries(r.baseMetrics)
    .map(([k, v]) => `${k} ${v.accuracy.toFixed(3)}`)
    .join(', ');
  say(
    `  ${label} round ${r.round}: model v${r.baseVersion} before training: ${accs}; lr ${r.learningRate.toPrecision(3)}${Object.keys(r.trainMs).length ? `, ${(Math.max(...Object.values(r.trainMs)) / 1000).toFixed(1)} s training` : ''}`,
  );
};

/**
 * 1. centralized: one trainer on every site's training images pooled. `centralized-head` (off by
 * default) is the same with only the classifier head trained on the frozen base: what a head on
 * that base reaches when the images may move, so a head-only federation's gap to full fine-tuning
 * can be told apart into what the frozen features cost and what federating the head costs.
 */
export async function runCentralizedArm(ctx: ArmContext): Promise<void> {
  for (const [arm, federate] of [
    ['centralized', 'all'],
    ['centralized-head', 'head'],
  ] as const) {
    const central = fixedArmSettings(ctx.config, arm);
    if (central) await centralizedArm(ctx, arm, federate, central);
  }
}

async function centralizedArm(ctx: ArmContext, arm: 'centralized' | 'centralized-head', federate: 'all' | 'head', central: ArmSettings): Promise<void> {
  const { config, say } = ctx;
  say(
    `${arm}: every site's training images pooled (${ctx.pooled.train.count}), ${federate === 'head' ? 'the head alone trained on the frozen base, ' : ''}${central.rounds} rounds x ${central.epochs} epochs`,
  );
  const trainer = new TfjsTrainer(ctx.runtime, ctx.pooled, ctx.trainerOptions);
  const run = await runRounds({
    initial: ctx.initial.pretrained,
    rounds: central.rounds,
    task: armTask(ctx, central),
    learningRateDecay: central.learningRateDecay,
    federate,
    participants: [{ id: 'pooled', trainer }],
    federated: false,
    targetAccuracy: config.targetAccuracy,
    stopAtTarget: false,
    evaluate: ctx.siteEvaluator,
    onRound: progress(say, arm),
    watch: ctx.watchEvaluator,
  });
  const moved = [...ctx.imagesBytes.values()].reduce((a, b) => a + b, 0);
  await ctx.results.add(
    {
      id: arm,
      arm,
      site: null,
      init: 'pretrained',
      federate,
      rounds: run.rounds,
      roundsRun: run.rounds.length,
      epochsPerRound: central.epochs,
      localSteps: central.localSteps,
      recipe: null,
      options: config.arms[arm] || {},
      reason: run.reason,
      roundsToTarget: roundsToTarget(run.rounds, run.finalMetrics, ctx.siteIds, config.targetAccuracy),
      targetSites: ctx.siteIds,
      bytes: { upPerRound: 0, downPerRound: 0, total: moved, imagesMoved: moved },
      modelDir: await saveModel(join(config.out, 'arms', arm, 'models'), run.final),
    },
    run.final,
  );
}

/** 2. local-only: every site trains alone on its own images. */
export async function runLocalOnlyArms(ctx: ArmContext): Promise<void> {
  const { config, say } = ctx;
  const local = fixedArmSettings(config, 'local-only');
  if (!local) return;
  for (const s of ctx.sites) {
    say(`local-only ${s.id}: its own ${ctx.siteData.get(s.id)!.train.count} training images, ${local.rounds} rounds x ${local.epochs} epochs`);
    const run = await runRounds({
      initial: ctx.initial.pretrained,
      rounds: local.rounds,
      task: armTask(ctx, local),
      learningRateDecay: local.learningRateDecay,
      federate: 'all',
      participants: [{ id: s.id, trainer: ctx.trainers.get(s.id)! }],
      federated: false,
      targetAccuracy: config.targetAccuracy,
      stopAtTarget: false,
      onRound: progress(say, `local-only ${s.id}`),
    });
    await ctx.results.add(
      {
        id: `local-only:${s.id}`,
        arm: 'local-only',
        site: s.id,
        init: 'pretrained',
        federate: 'all',
        rounds: run.rounds,
        roundsRun: run.rounds.length,
        epochsPerRound: local.epochs,
        localSteps: local.localSteps,
        recipe: null,
        options: config.arms['local-only'] || {},
        reason: run.reason,
        roundsToTarget: roundsToTarget(run.rounds, run.finalMetrics, [s.id], config.targetAccuracy),
        targetSites: [s.id],
        bytes: { upPerRound: 0, downPerRound: 0, total: 0, imagesMoved: 0 },
        modelDir: await saveModel(join(config.out, 'arms', 'local-only', s.id, 'models'), run.final),
      },
      run.final,
    );
  }
}

interface FederatedArm {
  /** The model's id in the results: the fixed arm's name, or recipe:<name>. */
  id: string;
  arm: ArmName;
  /** Folder under `<out>/arms` and federation name suffix (A-Z a-z 0-9 _ . -). */
  dirName: string;
  federate: 'all' | 'head';
  init: 'pretrained' | 'random';
  recipe: string | null;
  options: ArmOptions & { federate?: 'all' | 'head'; init?: 'pretrained' | 'random' };
  settings: ArmSettings;
}

const fixedFederatedArms: readonly { name: ArmName; federate: 'all' | 'head'; init: 'pretrained' | 'random' }[] = [
  { name: 'federated-all', federate: 'all', init: 'pretrained' },
  { name: 'federated-head', federate: 'head', init: 'pretrained' },
  { name: 'federated-random', federate: 'all', init: 'random' },
];

/** The fixed federated arms that run, then every recipe (reported under the fixed arm of the same federate and init). */
function federatedArmsOf(config: ExperimentConfig): FederatedArm[] {
  const fixed = fixedFederatedArms.flatMap((a): FederatedArm[] => {
    const o = config.arms[a.name];
    if (o === false) return [];
    return [{ id: a.name, arm: a.name, dirName: a.name, federate: a.federate, init: a.init, recipe: null, options: o, settings: armSettings(config, o) }];
  });
  const recipes = config.recipes.map((r: Recipe): FederatedArm => {
    const { name, ...options } = r;
    const arm: ArmName = r.init === 'random' ? 'federated-random' : r.federate === 'head' ? 'federated-head' : 'federated-all';
    return {
      id: `recipe:${name}`,
      arm,
      dirName: `recipe-${name}`,
      federate: r.federate,
      init: r.init,
      recipe: name,
      options,
      settings: armSettings(config, r),
    };
  });
  return [...fixed, ...recipes];
}

interface ArmRun {
  rounds: RoundRecord[];
  final: GlobalModel;
  finalMetrics: Record<string, EvalMetrics>;
  reason: string;
  modelDir: string;
  siteModels?: Record<string, GlobalModel>;
}

/** 3-5. federated: federate all (Process1), head only (Process2), all from a random common init; then the recipes; each once per batch normalisation mode. */
export async function runFederatedArms(ctx: ArmContext): Promise<void> {
  for (const arm of federatedArmsOf(ctx.config)) {
    const { settings } = arm;
    const work = settings.localSteps === null ? `${settings.epochs} local epochs` : `${settings.localSteps} local steps`;
    for (const batchNorm of settings.batchNorm) {
      const id = settings.batchNorm.length > 1 ? `${arm.id}/bn-${batchNorm}` : arm.id;
      const dirName = settings.batchNorm.length > 1 ? `${arm.dirName}/bn-${batchNorm}` : arm.dirName;
      ctx.say(
        `${id}: ${ctx.sites.length} sites, federate ${arm.federate}, ${arm.init} init, ${settings.strategy.strategy}, batch normalisation ${batchNorm}, ${settings.rounds} rounds x ${work} (${ctx.config.mode})`,
      );
      const run = ctx.config.mode === 'mqtt' ? await federatedOverMqtt(ctx, arm, batchNorm) : await federatedInProcess(ctx, arm, id, dirName, batchNorm);
      await addFederatedResult(ctx, arm, id, dirName, batchNorm, run);
    }
  }
}

async function addFederatedResult(ctx: ArmContext, arm: FederatedArm, id: string, dirName: string, batchNorm: BatchNormMode, run: ArmRun): Promise<void> {
  const { settings } = arm;
  const trained = run.rounds.filter((r) => r.newVersion !== null);
  const up = trained.reduce((s, r) => s + r.bytesUp, 0);
  const down = run.rounds.reduce((s, r) => s + r.bytesDown, 0);
  const common = {
    arm: arm.arm,
    init: arm.init,
    federate: arm.federate,
    recipe: arm.recipe,
    options: arm.options,
    batchNorm,
    rounds: run.rounds,
    roundsRun: trained.length,
    epochsPerRound: settings.epochs,
    localSteps: settings.localSteps,
    reason: run.reason,
    targetSites: ctx.siteIds,
    bytes: {
      upPerRound: trained.length ? up / trained.length : 0,
      downPerRound: trained.length ? down / trained.length : 0,
      total: up + down,
      imagesMoved: 0,
    },
  };
  await ctx.results.add(
    { ...common, id, site: null, roundsToTarget: roundsToTarget(run.rounds, run.finalMetrics, ctx.siteIds, ctx.config.targetAccuracy), modelDir: run.modelDir },
    run.final,
  );
  // FedBN: every site's own model too (the global weights with the site's BN), judged on every set.
  for (const [site, model] of Object.entries(run.siteModels ?? {})) {
    await ctx.results.add(
      {
        ...common,
        id: `${id}:${site}`,
        site,
        roundsToTarget: null,
        modelDir: await saveModel(join(ctx.config.out, 'arms', dirName, 'site-models', site), model),
      },
      model,
    );
  }
}

/** A federated arm with simulated agents in this process (experiment/rounds.ts). */
async function federatedInProcess(ctx: ArmContext, arm: FederatedArm, id: string, dirName: string, batchNorm: BatchNormMode): Promise<ArmRun> {
  const { config } = ctx;
  const participants: Participant[] = ctx.sites.map((s) => ({ id: s.id, trainer: ctx.trainers.get(s.id)! }));
  const run = await runRounds({
    initial: arm.init === 'pretrained' ? ctx.initial.pretrained : ctx.initial.random,
    rounds: arm.settings.rounds,
    task: armTask(ctx, arm.settings),
    learningRateDecay: arm.settings.learningRateDecay,
    federate: arm.federate,
    participants,
    federated: true,
    strategy: { ...arm.settings.strategy, stateDir: join(config.out, 'arms', dirName, 'server-state') },
    batchNorm,
    statisticsPasses: arm.settings.statisticsPasses,
    targetAccuracy: config.targetAccuracy,
    stopAtTarget: config.stopAtTarget,
    onRound: progress(ctx.say, id),
    watch: ctx.watchEvaluator,
  });
  return { ...run, modelDir: await saveModel(join(config.out, 'arms', dirName, 'models'), run.final) };
}

/** A federated arm over MQTT: a broker, an aggregator and one agent process per site (experiment/mqtt-arm.ts). */
async function federatedOverMqtt(ctx: ArmContext, arm: FederatedArm, batchNorm: BatchNormMode): Promise<ArmRun> {
  const { config } = ctx;
  if (batchNorm !== 'average') {
    throw new FedlineError(
      ErrorCodes.CONFIG_INVALID,
      `${arm.id}: batchNorm ${batchNorm} runs in mode in-process only (over MQTT the agents average BN tensors)`,
    );
  }
  const r = await runFederatedArmOverMqtt({
    dir: join(config.out, 'arms', arm.dirName, 'mqtt'),
    federation: `experiment-${arm.dirName}`,
    sites: ctx.sites,
    rounds: arm.settings.rounds,
    task: armTask(ctx, arm.settings),
    learningRateDecay: arm.settings.learningRateDecay,
    federate: arm.federate,
    strategy: arm.settings.strategy,
    model: arm.init === 'pretrained' ? ctx.initial.pretrainedSpec : ctx.spec,
    targetAccuracy: config.stopAtTarget ? config.targetAccuracy : null,
    data: {
      testFraction: config.testFraction,
      splitSeed: config.splitSeed ?? config.seed,
      cacheMB: config.training.cacheMB,
      decoder: config.training.decoder,
      augmentation: config.training.augmentation,
    },
    training: { backend: config.training.backend, shuffleSeed: config.training.shuffleSeed },
    chunkBytes: config.mqtt.chunkBytes,
    roundDeadlineMs: config.mqtt.roundDeadlineMs,
    say: ctx.say,
  });
  for (const rec of r.rounds) progress(ctx.say, arm.id)(rec);
  return { ...r, modelDir: r.finalDir };
}
