import { z } from 'zod';
import { agentConfigSchema, backendPreferences, modelSpecSchema, serverOptimizerSchema } from '../shared/config/service-config.js';
import { strategyNames } from '../aggregator/strategy-registry.js';
import { isValidId } from '../shared/protocol/topics.js';
import { batchNormModes } from './batch-norm-rounds.js';
import { REFERENCE_SETS } from '../synthetic-data/catalogue.js';

/**
 * The experiment's configuration (`fedline experiment --config FILE`): which data, which model,
 * the training schedule shared by every arm, and which arms run. Validated once, unknown keys
 * refused; relative paths are relative to the config file (shared/config/service-config.ts loadConfigFile).
 */

const path = z.string().min(1);
const posInt = z.number().int().positive();
const siteId = z.string().refine(isValidId, { message: 'a site name is an agent id: 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit' });
const className = z.string().regex(/^[A-Za-z0-9_.-]+$/, 'class names are folder names: A-Z a-z 0-9 _ . -');

/** Generated USB-inspection images (synthetic-data/generate.ts generateExperimentData), written under `<out>/data`. */
const syntheticDataSchema = z.strictObject({
  source: z.literal('synthetic'),
  /** Image side, px. Default 32. */
  size: z.number().int().min(16).max(512).default(32),
  /** Multiplies every image count. Default 1 (about 700 client images, 100 external, 180 probes). */
  scale: z.number().gt(0).max(20).default(1),
  /** Seed of the images. Default: the experiment's seed. */
  seed: z.number().int().nonnegative().optional(),
  /**
   * The clients' EMPTY scenes: workshop (a workbench with tools, default) or classic (the
   * `fedline demo` agents' images, to measure on the demo's own task). External set and probes have no EMPTY image.
   */
  clientClutter: z.enum(['workshop', 'classic']).default('workshop'),
});

/** The user's own images: one folder per site (`<dir>/<CLASS>/*.png|jpg`), optional evaluation folders. */
const folderDataSchema = z.strictObject({
  source: z.literal('folders'),
  /** Site name -> image folder. Each site is one client (one agent in the federated arms). */
  sites: z.record(siteId, path).refine((s) => Object.keys(s).length >= 2, { message: 'at least two sites' }),
  /** The federation's class list (folder names); index i is the same class at every site. */
  classes: z.array(className).min(2),
  /** A folder never trained on (the paper's USB 3.0 set), same layout. */
  external: path.optional(),
  /** Probe name -> folder (e.g. site A's product with site B's defect), same layout. */
  probes: z.record(z.string().regex(/^[A-Za-z0-9_.-]+$/), path).optional(),
  /**
   * Which probe belongs to which site (the site whose product it shows) and whose defect it
   * carries (another site's name), so the report can compare models on "other clients' defects".
   */
  probeSites: z.record(z.string(), z.strictObject({ product: siteId, defectOf: siteId })).optional(),
});

export const armNames = ['centralized', 'centralized-head', 'local-only', 'federated-all', 'federated-head', 'federated-random'] as const;
export type ArmName = (typeof armNames)[number];

/**
 * What one arm may change from the shared `training` and `rounds`: the fixed arms' overrides and
 * every recipe's settings. A new per-arm option goes here (and into experiment/arms.ts armSettings);
 * recipes get it too, and the ranking (experiment/ranking.ts) needs no change.
 */
export const armOptionsShape = {
  /** Rounds for this arm (default: `rounds`). Centralized and local-only train in rounds too: `epochs` per round, same learning-rate schedule. */
  rounds: posInt.optional(),
  /** Local epochs per round (default: training.epochs). */
  epochs: posInt.optional(),
  /** Optimizer steps per round instead of epochs (default: training.localSteps); null: epochs even when training sets localSteps. */
  localSteps: posInt.nullable().optional(),
  learningRate: z.number().positive().optional(),
  /**
   * This arm's learning rate in round r is learningRate * learningRateDecay^(r-1) (default:
   * training.learningRateDecay): e.g. a head-only recipe that settles faster than full fine-tuning.
   */
  learningRateDecay: z.number().gt(0).max(1).optional(),
  /** shuffle or balanced (default: training.sampling). */
  sampling: z.enum(['shuffle', 'balanced']).optional(),
  /**
   * Federated arms: the aggregation strategy, as the aggregator's `strategy` (fedavg, fedprox, fedavgm,
   * fedadam, fedyogi, scaffold, the robust ones). Default fedavg. Ignored by centralized and local-only.
   */
  strategy: z
    .string()
    .refine((n) => strategyNames.includes(n), { message: `must be one of ${strategyNames.join(', ')}` })
    .optional(),
  /** fedprox: the proximal weight mu, as the aggregator's `proxMu`. Default 0.01. */
  proxMu: z.number().min(0).optional(),
  /** fedavgm, fedadam, fedyogi: as the aggregator's `serverOptimizer` (default: the paper's values); scaffold: its learningRate is η_g (default 1). */
  serverOptimizer: serverOptimizerSchema.optional(),
  /**
   * Federated arms: how batch normalisation crosses sites (docs/training.md): average (FedAvg of
   * every BN tensor), pooled-statistics (then re-estimate the moving statistics from every site's
   * images with the new weights), local (FedBN: BN tensors stay at their site). A list runs the
   * arm once per mode (ids `<arm>/bn-<mode>`), on the same splits and seeds. Default average.
   * In-process mode only, except average.
   */
  batchNorm: z.union([z.enum(batchNormModes), z.array(z.enum(batchNormModes)).min(1)]).optional(),
  /** pooled-statistics and local: statistics passes per round (pass p makes the first p BN layers exact). Default 1. */
  statisticsPasses: posInt.optional(),
};
export type ArmOptions = z.infer<z.ZodObject<typeof armOptionsShape>>;

const armSchema = z.union([z.literal(false), z.strictObject(armOptionsShape)]);

/**
 * A federated recipe: one more federated arm, on the same data, splits, initial weights and seeds
 * as every other arm; results.json and report.md rank the recipes (experiment/ranking.ts).
 */
const recipeSchema = z.strictObject({
  /** Its name in the ranking and in `<out>/arms/recipe-<name>` (A-Z a-z 0-9 _ . -, at most 40 characters). */
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,40}$/, 'a recipe name is 1-40 characters of A-Z a-z 0-9 _ . -'),
  /** all: every weight trains and travels (Process1); head: the classifier head only (Process2). Default all. */
  federate: z.enum(['all', 'head']).default('all'),
  /** pretrained: the common pretrained base (as federated-all); random: the seeded init (as federated-random). Default pretrained. */
  init: z.enum(['pretrained', 'random']).default('pretrained'),
  ...armOptionsShape,
});
export type Recipe = z.infer<typeof recipeSchema>;

/** The issue's goals, checked in the ranking (points are fractions: 0.02 = 2 points). */
const goalsSchema = z.strictObject({
  /** The best recipe's external balanced accuracy at most this far below centralized's. Default 0.02. */
  externalBalancedGap: z.number().min(0).max(1).default(0.02),
  /** The best recipe's probe defect recall at most this far below centralized's. Default 0.03. */
  probeDefectRecallGap: z.number().min(0).max(1).default(0.03),
  /** The best head-only recipe's external balanced accuracy at most this far below the best full one. Default 0.08. */
  headVsFullGap: z.number().min(0).max(1).default(0.08),
  /** Head-only: the largest fall of mean site accuracy from one round to the next. Default 0.01. */
  headMaxDecline: z.number().min(0).max(1).default(0.01),
});
export type Goals = z.infer<typeof goalsSchema>;

export const experimentConfigSchema = z.strictObject({
  name: z.string().default('experiment'),
  /** Where the report, results, confusion matrices, models and generated data go. Default ./experiment-out. */
  out: path.default('experiment-out'),
  /** Seed of the generated images, the train/test split and the common head init (unless set separately). Default 42. */
  seed: z.number().int().nonnegative().default(42),
  /**
   * Run the whole comparison once per seed s, as the single-seed run with `seed`, `model.seed` and
   * `training.shuffleSeed` all set to s (so images, split, head init and image order all change),
   * into `<out>/seed-<s>`; the pretrained base is made once and shared. results.json and report.md
   * in `<out>` then rank every federated model by its mean over the seeds. Default: one run, `seed`.
   */
  seeds: z
    .array(z.number().int().nonnegative())
    .min(1)
    .refine((a) => new Set(a).size === a.length, { message: 'seeds must differ' })
    .optional(),
  /** in-process: simulated agents in this process (fast); mqtt: a broker, an aggregator and one agent process per site. */
  mode: z.enum(['in-process', 'mqtt']).default('in-process'),
  data: z.discriminatedUnion('source', [syntheticDataSchema, folderDataSchema]),
  /** The class counted as a defect (recall columns). Default NOT_OKAY when it is a class, else none. */
  defectClass: className.nullable().optional(),
  /** Share of each class held out per site as its local test split. Default 0.2. */
  testFraction: z.number().gt(0).lt(1).default(0.2),
  /** Seed of the train/test split. Default: the experiment's seed. */
  splitSeed: z.number().int().nonnegative().optional(),
  /** The model (as the aggregator's `model`, without classes and initFrom, which come from data and pretrained). */
  model: modelSpecSchema.omit({ classes: true, initFrom: true }),
  /**
   * The common initial weights of every arm but federated-random: a tfjs layers folder. When `dir`
   * holds a model.json it is reused (e.g. made by `fedline pretrain`, or converted ImageNet
   * weights); otherwise it is trained here on `data` (default: the generated reference images:
   * other products, other defects, other objects) and saved there. null: no pretraining (every
   * arm from the seeded init).
   */
  pretrained: z
    .strictObject({
      /** Default `<out>/pretrained-<architecture>[-bn]-w<width>-<size>px`. */
      dir: path.optional(),
      /** Reference images `<dir>/<CLASS>/*`; default: generated (synthetic data only). */
      data: path.optional(),
      /**
       * Multiplies the generated reference images' counts (synthetic data without
       * `pretrained.data` only; the clients', external and probe images keep `data.scale`). At
       * scale 1 each reference product has 10 NOT_OKAY images per defect: too few for a base to
       * learn a defect of a few pixels (docs/experiment.md, "Why the base never learnt the
       * reference defects"). Default: `data.scale`, as before.
       */
      referenceScale: z.number().gt(0).max(20).optional(),
      /**
       * The generated reference products (synthetic-data/catalogue.ts REFERENCE_SETS): classic
       * (every port with the same light-brown contact tongue) or varied-tongues (each image's
       * tongue one of seven USB colours at a random tone). Only the reference images change.
       * Default classic (docs/experiment.md, "Reference products with varied contact tongues").
       */
      references: z.enum(REFERENCE_SETS).default('classic'),
      epochs: posInt.default(15),
      batchSize: posInt.default(32),
      learningRate: z.number().positive().default(0.0005),
      /**
       * Per-epoch factor of the pretraining learning rate (epoch e, from 1, at learningRate x
       * learningRateDecay^(e-1); Adam's state kept). Default 1: constant (docs/experiment.md,
       * "The base's own held-out accuracy", for what decaying did).
       */
      learningRateDecay: z.number().gt(0).max(1).default(1),
      /**
       * Save the weights of the epoch with the best balanced accuracy on the held-out 20 % of the
       * reference images, not the last epoch's (`fedline pretrain --keep-best`); pretrain.json
       * records the epoch. Default false.
       */
      keepBest: z.boolean().default(false),
      /** Kernels before pretraining: he (He-normal, default: deep VGGs train from scratch) or seeded (Glorot). */
      init: z.enum(['he', 'seeded']).default('he'),
      /**
       * Augment the reference images while pretraining (training/pretrain.ts REFERENCE_AUGMENTATION:
       * flips, lighting, turns of up to 10 degrees). Default true: the base's features then carried
       * better to the clients' images (docs/experiment.md, "Head-only").
       */
      augmentation: z.boolean().default(true),
      /**
       * The self-supervised site pass (experiment/self-supervised.ts): after the base is made or
       * reused, every site trains it on the rotation pretext with its own unlabelled training
       * images and the sites' weights are averaged, `rounds` rounds of `epochs` local epochs (Adam,
       * `learningRate`, batches of `batchSize`); the result is the common start of every
       * pretrained arm. No label is read and no image leaves its site. Default null: none.
       */
      selfSupervised: z
        .strictObject({
          /** Rounds of site training and averaging. Default 3. */
          rounds: posInt.default(3),
          /** Local epochs per round over the four turns of every image. Default 1. */
          epochs: posInt.default(1),
          /** Images per batch. Default 32. */
          batchSize: posInt.default(32),
          /** Adam's learning rate. Default 0.0005. */
          learningRate: z.number().positive().default(0.0005),
        })
        .nullable()
        .default(null),
    })
    .nullable()
    .default({
      references: 'classic',
      epochs: 15,
      batchSize: 32,
      learningRate: 0.0005,
      learningRateDecay: 1,
      keepBest: false,
      init: 'he',
      augmentation: true,
      selfSupervised: null,
    }),
  /** The local training task of every arm, as the aggregator's `task` (federated comes from the arm). */
  training: z.strictObject({
    epochs: posInt.default(2),
    /** Optimizer steps per round instead of epochs, every site and arm alike (the task's localSteps). Default unset: epochs. */
    localSteps: posInt.optional(),
    batchSize: posInt.default(16),
    learningRate: z.number().positive().default(0.0005),
    /** Learning rate of round r: learningRate * learningRateDecay^(r-1), the aggregator's schedule. Default 1. */
    learningRateDecay: z.number().gt(0).max(1).default(1),
    optimizer: z.enum(['sgd', 'momentum', 'adam']).default('adam'),
    classWeighting: z.enum(['auto', 'balanced', 'none']).default('auto'),
    sampling: z.enum(['shuffle', 'balanced']).default('shuffle'),
    /** Every site's shuffle seed (the agents' training.shuffleSeed). Default 1. */
    shuffleSeed: z.number().int().nonnegative().default(1),
    augmentation: agentConfigSchema.shape.data.shape.augmentation,
    backend: z.enum(backendPreferences).default('auto'),
    decoder: z.enum(['auto', 'sharp', 'js']).default('auto'),
    /** Decoded-image memory per site, MiB. Default 1024. */
    cacheMB: z.number().int().min(0).default(1024),
  }),
  /** Rounds of every arm (unless the arm says otherwise). */
  rounds: posInt,
  /** "Rounds to target": the first round after which the model reaches this accuracy on every site's local test split. */
  targetAccuracy: z.number().min(0).max(1).nullable().default(0.95),
  /** Stop a federated arm once the target is reached (the paper's criterion), as the aggregator's targetAccuracy does. Default false: every round runs. */
  stopAtTarget: z.boolean().default(false),
  /**
   * Which arms run, each with optional overrides; false leaves one out. Default: centralized,
   * local-only and the three federated arms; `centralized-head` (the head alone trained on the
   * pooled images: the ceiling of head-only federation on this base) only when asked for.
   */
  arms: z
    .strictObject({
      centralized: armSchema.default({}),
      'centralized-head': armSchema.default(false),
      'local-only': armSchema.default({}),
      'federated-all': armSchema.default({}),
      'federated-head': armSchema.default({}),
      'federated-random': armSchema.default({}),
    })
    .default({ centralized: {}, 'centralized-head': false, 'local-only': {}, 'federated-all': {}, 'federated-head': {}, 'federated-random': {} }),
  /** More federated arms, ranked against each other (and the fixed federated arms). Default none. */
  recipes: z
    .array(recipeSchema)
    .refine((r) => new Set(r.map((x) => x.name)).size === r.length, { message: 'recipe names must differ' })
    .default([]),
  goals: goalsSchema.prefault({}),
  /** mqtt mode only. */
  mqtt: z
    .strictObject({
      /** Chunk size of models and updates, bytes. Default 262144. */
      chunkBytes: z
        .number()
        .int()
        .min(1024)
        .default(256 * 1024),
      /** Deadline of each round, ms. Default 3600000. */
      roundDeadlineMs: posInt.default(3_600_000),
    })
    .default({ chunkBytes: 256 * 1024, roundDeadlineMs: 3_600_000 }),
});
export type ExperimentConfig = z.infer<typeof experimentConfigSchema>;
