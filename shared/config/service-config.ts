import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import { federatedSetSchema, normalizationModes } from '../protocol/messages.js';
import { isValidId } from '../protocol/topics.js';
import { updateEncodings } from '../bundle/value-encodings.js';
import { triggerSchema } from './trigger-config.js';

/**
 * Configuration schemas of the aggregator and the agent, and the parts they share with the other
 * services (mqtt, metrics, model): each field with its unit, default and reason. Validated once at
 * start-up (unknown keys refused), then frozen and passed down, as Fastify does (config-file.ts).
 * The broker, plant, inspection and trigger schemas have their own files.
 */

const id = z.string().refine(isValidId, { message: 'must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit' });
const posInt = z.number().int().positive();

/** `training.backend` values: auto picks the best available; the others force one (see training/backend.ts). */
export const backendPreferences = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendPreference = (typeof backendPreferences)[number];
const path = z.string().min(1);
/** Shared with the other services' schemas (broker-config.ts). */
export { id as idSchema, posInt as positiveIntSchema, path as pathSchema };

const mqttUrl = z.string().regex(/^mqtts?:\/\/[^\s/]+(:\d+)?\/?$/, 'must look like mqtt://host:port or mqtts://host:port');

export const mqttConfigSchema = z.strictObject({
  /** mqtt://host:port or mqtts://host:port (TLS). */
  url: mqttUrl,
  /**
   * The other nodes of a broker cluster (`fedline broker` with `cluster`), tried in turn after `url`
   * when the connection is lost or cannot be made; each switch is logged. Same credentials and TLS files for all.
   */
  urls: z.array(mqttUrl).max(16).optional(),
  username: z.string().optional(),
  /** Inline password; prefer passwordFile on real deployments. */
  password: z.string().optional(),
  /** File holding the password (first line), e.g. under systemd's CREDENTIALS_DIRECTORY. */
  passwordFile: path.optional(),
  caFile: path.optional(),
  certFile: path.optional(),
  keyFile: path.optional(),
  /** Delay between reconnect attempts, ms. Default 1000. */
  reconnectPeriodMs: posInt.default(1000),
  /** Connection attempt timeout, ms. Default 10000. */
  connectTimeoutMs: posInt.default(10_000),
  /** MQTT keepalive, s. Default 30. */
  keepaliveSec: posInt.default(30),
});
export type MqttConfig = z.infer<typeof mqttConfigSchema>;

/**
 * Prometheus metrics and a health check over HTTP (shared/observability/metrics-server.ts,
 * docs/metrics.md): off unless given; loopback unless `host` says otherwise.
 */
export const metricsConfigSchema = z.strictObject({
  /** TCP port of /metrics and /healthz; 0 picks a free one. */
  port: z.number().int().min(0).max(65535),
  /** Address to listen on. Default 127.0.0.1. */
  host: z.string().min(1).default('127.0.0.1'),
});

export const modelArchitectures = ['small-cnn', 'vgg11', 'vgg16', 'vgg19'] as const;

/** The server optimizers' parameters (aggregator `serverOptimizer`, experiment arms): see the aggregator's field. */
export const serverOptimizerSchema = z.strictObject({
  learningRate: z.number().positive().nullable().default(null),
  beta1: z.number().min(0).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.99),
  tau: z.number().positive().default(1e-3),
});

export const modelSpecSchema = z.strictObject({
  /** Model builder name (see training/models.ts): small-cnn, or the paper's vgg11 / vgg16 / vgg19. */
  architecture: z.enum(modelArchitectures).default('small-cnn'),
  /** Multiplies every convolution's filter count (1 = the published VGG; 0.25 runs small on a CPU). Default 1. */
  width: z.number().gt(0).max(4).default(1),
  /** The classifier head: hidden dense layers (ReLU) and dropout, then the class count. Default: per architecture (small-cnn [32]; VGG [256], dropout 0.5). */
  head: z
    .strictObject({
      dense: z.array(posInt.max(65_536)).max(8),
      dropout: z.number().min(0).lt(1).default(0),
    })
    .optional(),
  /**
   * Batch normalisation after every convolution (a VGG-BN; training/models.ts). Its moving
   * statistics are averaged by FedAvg like every other weight. Default false (the published VGG).
   */
  batchNorm: z.boolean().optional(),
  /** [height, width, channels]. */
  inputShape: z.tuple([posInt, posInt, z.union([z.literal(1), z.literal(3)])]).default([32, 32, 3]),
  /** The federation's fixed class list: index i means the same class on every agent. */
  classes: z.array(z.string().regex(/^[A-Za-z0-9_.-]+$/, 'class names are folder names: A-Z a-z 0-9 _ . -')).min(2),
  /** Seed of the common initial weights. */
  seed: z.number().int().nonnegative().default(42),
  /**
   * Input normalisation: unit ([0,1]), per-image (mean 0, std 1 per image), imagenet (torch-style
   * mean/std) or caffe (Keras VGG16/VGG19 weights). Default: imagenet with initFrom, else per-image.
   */
  normalization: z.enum(normalizationModes).optional(),
  /**
   * A tfjs layers model folder (model.json + weights, e.g. Keras VGG19 ImageNet weights converted
   * with tensorflowjs_converter): every layer of the model with the same name takes its weights;
   * the others (the head) keep the seeded init. Nothing is downloaded.
   */
  initFrom: path.optional(),
});
export type ModelSpec = z.infer<typeof modelSpecSchema>;

export const aggregatorConfigSchema = z.strictObject({
  federation: id,
  /** Topic root. Default fl/<federation>. */
  topicRoot: z.string().optional(),
  mqtt: mqttConfigSchema,
  /** Where global model versions, spooled updates and the journal live. */
  stateDir: path,
  /** Agents allowed to take part; updates from others are refused. */
  agents: z.array(id).min(1),
  /** Training rounds to run (the federation may stop earlier at targetAccuracy). */
  rounds: posInt,
  /** A round closing at its deadline is aggregated only with at least this many updates. */
  minClients: posInt.default(1),
  /** Time an open round waits for updates, ms. Default 600000 (10 min). */
  roundDeadlineMs: posInt.default(600_000),
  /** Time to wait for all agents to come online before starting with >= minClients, ms. Default 60000. */
  waitForAgentsMs: posInt.default(60_000),
  /** Stop once the global model reaches this accuracy on every agent's local test split. */
  targetAccuracy: z.number().min(0).max(1).nullable().default(null),
  /** Chunk size for models and updates, bytes. Default 262144 (256 KiB, within EMQX's 1 MB packet limit). */
  chunkBytes: z
    .number()
    .int()
    .min(1024)
    .max(64 * 1024 * 1024)
    .default(256 * 1024),
  /**
   * Largest update bundle accepted, bytes. Default: derived from the round's model (its federated
   * tensors in the round's encoding plus header slack, aggregator/verify-update.ts
   * derivedMaxUpdateBytes); a value set here can only lower that bound.
   */
  maxUpdateBytes: posInt.optional(),
  /** QoS 1 publishes in flight at once when sending the model. Default 32. */
  maxInflight: posInt.default(32),
  /** How agents encode their updates (announced per round): f32 (exact), f16 (half the bytes), q8 (blockwise 8-bit, ~4x fewer). Default f32. */
  encoding: z.enum(updateEncodings).default('f32'),
  /** Agents send the difference to the round's base model instead of the weights (more precise with f16/q8). Default false. */
  delta: z.boolean().default(false),
  /**
   * End-to-end flow control: update chunks the agents sending at the moment may have published
   * beyond those this aggregator reported stored, shared among them (progress acks every quarter
   * of an agent's share). Bounds what the broker queues for this aggregator however many agents
   * send at once, on any broker. 0 disables it. Default 256 (64 MiB at the default chunk size).
   */
  windowChunks: z
    .number()
    .int()
    .min(0)
    .max(1 << 20)
    .default(256),
  task: z.strictObject({
    /** Local epochs per round. Default 1. Ignored by agents when localSteps is set. */
    epochs: posInt.default(1),
    /**
     * Optimizer steps per round instead of epochs (every site the same, whatever its image count;
     * older agents ignore it and train `epochs`). Default unset: epochs.
     */
    localSteps: posInt.optional(),
    batchSize: posInt.default(32),
    learningRate: z.number().positive().default(0.01),
    /** The learning rate of round r is learningRate * learningRateDecay^(r-1) (server-side schedule). Default 1. */
    learningRateDecay: z.number().gt(0).max(1).default(1),
    /** sgd, momentum (0.9) or adam. Default sgd. */
    optimizer: z.enum(['sgd', 'momentum', 'adam']).default('sgd'),
    /** The local optimizer's state across rounds, announced in every task: reset (fresh every round; docs/training.md says why). Default (unset): reset. */
    optimizerState: z.enum(['reset']).optional(),
    /** Class-weighted loss against imbalance: auto (balanced when the largest class has > 1.5x the smallest), balanced, none. */
    classWeighting: z.enum(['auto', 'balanced', 'none']).default('auto'),
    /** shuffle (each image once per epoch) or balanced (classes drawn equally often; class weighting `auto` then stays off). Default shuffle. */
    sampling: z.enum(['shuffle', 'balanced']).default('shuffle'),
    /** Which tensors train and travel: all (the paper's Process1), head (Process2: feature extractor frozen), or a list of names. Default all. */
    federated: federatedSetSchema.default('all'),
  }),
  model: modelSpecSchema,
  /**
   * Aggregation strategy by name (aggregator/strategy-registry.ts): fedavg (sample-weighted mean,
   * McMahan et al. 2017), fedavg-clipped (FedAvg with each update's change clipped to the round's
   * median change), trimmed-mean (coordinate-wise, trimFraction cut from each end) or median
   * (coordinate-wise); the last two ignore sample counts; fedprox (FedAvg with proxMu in the task),
   * fedavgm, fedadam, fedyogi (server optimizers, serverOptimizer), scaffold (control variates,
   * Karimireddy et al. 2020; its server learning rate is serverOptimizer.learningRate, null = 1). Whatever the strategy, updates are first
   * screened by maxUpdateNormRatio / maxUpdateNorm. An unknown name stops the aggregator at
   * start-up (FL_CONFIG_INVALID). Default fedavg.
   */
  strategy: z.string().min(1).max(64).default('fedavg'),
  /**
   * fedavgm, fedadam, fedyogi (Reddi et al. 2021, Algorithm 2): the server's optimizer on the round's
   * pseudo-gradient (FedAvg of the updates minus the base). learningRate η: null = the kind's default
   * (fedavgm 1, fedadam/fedyogi 0.01, scaffold 1); beta1 (fedavgm's momentum) 0.9, beta2 0.99, tau 1e-3 as in the paper.
   */
  serverOptimizer: serverOptimizerSchema.prefault({}),
  /** fedprox (Li et al. 2020): the proximal weight mu announced in each round's task (mu/2 ||w - w_global||² in the local loss). Default 0.01. */
  proxMu: z.number().min(0).default(0.01),
  /** trimmed-mean: share of the updates cut from each end, per weight (ceil(fraction x updates), at most (updates - 1) / 2). Default 0.2. */
  trimFraction: z.number().min(0).lt(0.5).default(0.2),
  /** Refuse an update that changes the model more than this many times the median change of the round's other updates (L2). null disables. Default 10. */
  maxUpdateNormRatio: z.number().gt(1).nullable().default(10),
  /** Refuse an update that changes the model by more than this L2 norm. null (default) disables. */
  maxUpdateNorm: z.number().positive().nullable().default(null),
  /** Refuse an update claiming more training samples than this. null (default): no cap. */
  maxSamplesPerAgent: posInt.nullable().default(null),
  /**
   * Sites without a registered count (registeredSamples, maxSamplesPerAgent): a claim weighs at most
   * this many times the median claim of the round's other updates (the update is kept, its weight
   * clipped, an `FL_SAMPLES_CLIPPED` alert raised). null disables. Default 3.
   */
  maxSampleClaimRatio: z.number().min(1).nullable().default(3),
  /** Sample counts the sites registered; an update claiming more than registered x (1 + registeredSamplesTolerance) is refused. */
  registeredSamples: z.record(z.string(), posInt).default({}),
  /** Growth allowed over a registered sample count (new images since registration). Default 0.1. */
  registeredSamplesTolerance: z.number().min(0).default(0.1),
  /** Ed25519 private key (PEM) to sign every global model; agents verify with the public key. See `fedline keygen`. */
  signingKeyFile: path.optional(),
  /** After the last round, run an evaluation-only round so the final model's accuracy is known. Default true. */
  evaluateFinalModel: z.boolean().default(true),
  /**
   * Batch normalisation across sites (docs/training.md). average: BN tensors are averaged like any
   * other (the averaged moving variance misses the between-site variance); pooled-statistics:
   * after every aggregated training round, a `statistics` round: the agents run the new model over
   * their training images and send each BN layer's per-channel count, mean and M2; the pooled
   * statistics make the next version (the same weights). Needs agents that speak `bn-stats`.
   * Default average. (FedBN, BN kept local, runs in the experiment only.)
   */
  batchNorm: z.enum(['average', 'pooled-statistics']).default('average'),
  /**
   * Model release (aggregator/release-policy.ts): every aggregated version is a candidate; the
   * production lines (`fedline inspect`) run the released one. A candidate is checked when the
   * sites evaluate it on their local test splits (at the start of the next round, or in the final
   * evaluation round). Version 0 counts as released at the start.
   */
  release: z
    .strictObject({
      /** auto: release when every gate passes; approve: a passing candidate waits for the operator's `release` command. Default auto. */
      mode: z.enum(['auto', 'approve']).default('auto'),
      /** Every site's balanced accuracy on the candidate at least this. null (default): no minimum. */
      minBalancedAccuracy: z.number().min(0).max(1).nullable().default(null),
      /** Every site's recall of the defect classes (pooled) at least this. null (default): no minimum. */
      minDefectRecall: z.number().min(0).max(1).nullable().default(null),
      /** No site's balanced accuracy may drop by more than this against the released version. null disables. Default 0.02. */
      maxRegression: z.number().min(0).max(1).nullable().default(0.02),
      /** The classes that are defects, for minDefectRecall. Default ["NOT_OKAY"]. */
      defectClasses: z.array(z.string().min(1)).min(1).default(['NOT_OKAY']),
      /** Site evaluations a candidate needs before it is decided on. Default 1. */
      minSites: posInt.default(1),
    })
    .prefault({}),
  /** Start rounds at launch (default true), or wait for the MES's `<root>/cmd/start`. */
  autoStart: z.boolean().default(true),
  /** Exit the process when the federation completes (demo, batch jobs). Default false: keep serving the model. */
  exitWhenComplete: z.boolean().default(false),
  metrics: metricsConfigSchema.optional(),
  logLevel: z.string().optional(),
});
export type AggregatorConfig = z.infer<typeof aggregatorConfigSchema>;

export const agentConfigSchema = z.strictObject({
  agentId: id,
  federation: id,
  topicRoot: z.string().optional(),
  mqtt: mqttConfigSchema,
  /** Model cache and the agent's own journal. */
  stateDir: path,
  data: z.strictObject({
    /** Folder with one sub-folder per class: <dir>/<CLASS>/*.png */
    dir: path,
    /** Share of each class held out as the local test split. Default 0.2. */
    testFraction: z.number().gt(0).lt(1).default(0.2),
    /** Seed of the train/test split (same seed, same split on every run). Default 42. */
    splitSeed: z.number().int().nonnegative().default(42),
    /** Memory for decoded images, MiB; images beyond it are decoded from disk batch by batch. Default 1024. */
    cacheMB: z.number().int().min(0).default(1024),
    /** Image decoder: auto (sharp when installed, it is faster; else pure JS), sharp, js. Default auto. */
    decoder: z.enum(['auto', 'sharp', 'js']).default('auto'),
    /** Training-time augmentation (never applied to the test split). Default off. */
    augmentation: z
      .strictObject({
        /** Mirror with probability 1/2. Default none. */
        flip: z.enum(['none', 'horizontal', 'vertical', 'both']).default('none'),
        /** Largest brightness change, in [0, 1] pixel units. Default 0. */
        brightness: z.number().min(0).max(0.5).default(0),
        /** Largest relative contrast change. Default 0. */
        contrast: z.number().min(0).max(0.9).default(0),
        /** Largest rotation, degrees. Default 0. */
        rotationDeg: z.number().min(0).max(45).default(0),
      })
      .default({ flip: 'none', brightness: 0, contrast: 0, rotationDeg: 0 }),
  }),
  training: z
    .strictObject({
      /** tfjs backend: auto picks the best available (tensorflow GPU or native CPU when installed, then wasm, then cpu); the others force one. */
      backend: z.enum(backendPreferences).default('auto'),
      /** Seed of the per-epoch shuffle. Default 1. */
      shuffleSeed: z.number().int().nonnegative().default(1),
    })
    .default({ backend: 'auto', shuffleSeed: 1 }),
  /** Ed25519 public key (PEM) of the aggregator: when set, only models it signed are used. */
  modelPublicKeyFile: path.optional(),
  /**
   * When this box may train (shared/config/trigger-config.ts): OPC UA line state, MES topic, schedule
   * windows, operator commands, combined with all/any. Default {"type": "always"}.
   */
  trigger: triggerSchema.default({ type: 'always' }),
  /** Largest global model accepted, bytes. Default 2 GiB. */
  maxModelBytes: posInt.default(2 * 1024 * 1024 * 1024),
  /** QoS 1 update chunks in flight at once. Default 16. */
  maxInflight: posInt.default(16),
  /** How long to wait for the aggregator's verdict after sending, before asking again, ms. Default 15000. */
  ackTimeoutMs: posInt.default(15_000),
  metrics: metricsConfigSchema.optional(),
  logLevel: z.string().optional(),
});
export type AgentConfig = z.infer<typeof agentConfigSchema>;

/** The password from `password` or `passwordFile`, if any. */
export function mqttPassword(config: Pick<MqttConfig, 'password' | 'passwordFile'>): string | undefined {
  if (config.password !== undefined) return config.password;
  if (config.passwordFile) {
    try {
      return readFileSync(config.passwordFile, 'utf8').split(/\r?\n/)[0];
    } catch (err) {
      throw new FedlineError(ErrorCodes.CONFIG_READ, `cannot read MQTT password file ${config.passwordFile}: ${(err as Error).message}`);
    }
  }
  return undefined;
}
