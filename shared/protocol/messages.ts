import { z } from 'zod';
import { isValidId } from './topics.js';
import { updateEncodings } from '../bundle/value-encodings.js';

/**
 * Every message fedline sends, with its schema. docs/protocol.md describes the same fields for
 * implementers in other languages. `v` is the protocol version of the message; a receiver rejects
 * versions it does not know with a logged reason.
 */
export const PROTOCOL_VERSION = 1;
export const SUPPORTED_VERSIONS = [PROTOCOL_VERSION] as const;

const id = z.string().refine(isValidId, { message: 'must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit' });
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'must be a lowercase hex SHA-256');
const uint = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const posInt = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const bytes = z.instanceof(Uint8Array);
/**
 * A federation run's identity: made by the aggregator when it starts with fresh state, kept in its
 * journal (a restarted aggregator continues the same run). Agents key rounds by (runId, round).
 */
export const runIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 characters of A-Z a-z 0-9 _ -');

/** Classification metrics of one model on one data split (see shared/fl/classification-metrics.ts). */
export const evalMetricsSchema = z.object({
  samples: uint,
  loss: z.number().nullable(),
  accuracy: z.number().min(0).max(1),
  balancedAccuracy: z.number().min(0).max(1),
  /** confusion[trueClass][predictedClass] */
  confusion: z.array(z.array(uint)),
  precision: z.array(z.number().nullable()),
  recall: z.array(z.number().nullable()),
});
export type EvalMetrics = z.infer<typeof evalMetricsSchema>;

export const federatedSetSchema = z.union([z.literal('all'), z.literal('head'), z.array(z.string().min(1)).min(1)]);
export type FederatedSet = z.infer<typeof federatedSetSchema>;

const trainTaskSchema = z.object({
  /** Local epochs per round (full passes over the site's training images); ignored when localSteps is set. */
  epochs: posInt.max(10_000),
  /**
   * Optimizer steps (batches) per round instead of epochs: every site does this many, however many
   * images it has, taking batches in the same seeded per-epoch orders one epoch after another and
   * stopping mid-epoch at the last step. Optional on the wire; absent means `epochs` full epochs.
   * An agent older than this field ignores it and trains `epochs`.
   */
  localSteps: posInt.max(10_000_000).optional(),
  batchSize: posInt.max(65_536),
  /** This round's learning rate: the aggregator's schedule already applied (learningRate x learningRateDecay^(trainRoundsBefore)). */
  learningRate: z.number().positive().finite(),
  /** Local optimizer (momentum: 0.9; adam: tfjs defaults). */
  optimizer: z.enum(['sgd', 'momentum', 'adam']),
  /**
   * The local optimizer's state across rounds: `reset`, a fresh optimizer every round (no moments or
   * momentum carried over; only weights are federated). The only value: after averaging, a site's
   * old moments describe a model it no longer has, and FedAvg's analysis assumes each round's local
   * work starts from the global model alone. Optional on the wire; absent means reset.
   */
  optimizerState: z.enum(['reset']).optional(),
  /** Loss weights per class against imbalance: auto (balanced when imbalanced), balanced, none. */
  classWeighting: z.enum(['auto', 'balanced', 'none']),
  /**
   * Order of the training images in an epoch: shuffle (each image once), or balanced (as many draws,
   * every class equally likely: the few defect images are seen as often as the many good ones).
   * Optional on the wire; absent means shuffle.
   */
  sampling: z.enum(['shuffle', 'balanced']).optional(),
  /**
   * FedProx (Li et al. 2020): weight mu of the proximal term mu/2 ||w - w_global||² added to the local
   * loss over the federated tensors. Optional on the wire; absent or 0 means plain local training.
   */
  proxMu: z.number().min(0).finite().optional(),
  /**
   * SCAFFOLD (Karimireddy et al. 2020): correct every local step by -learningRate (c - c_i) (the
   * announcement's `control` variate c, the agent's own c_i), keep c_i+ on the agent and report the steps taken
   * (update meta `steps`). Optional on the wire; absent or false means plain local training.
   */
  scaffold: z.boolean().optional(),
  /** Which tensors train and travel: all of them, the classifier head, or an explicit list. */
  federated: federatedSetSchema,
});
export type TrainTask = z.infer<typeof trainTaskSchema>;

const signatureHex = z.string().regex(/^[0-9a-f]{128}$/, 'must be a hex Ed25519 signature');

const modelRefSchema = z.object({
  version: uint,
  sha256: sha256Hex,
  bytes: posInt,
  chunks: posInt,
  chunkBytes: posInt,
  /** Ed25519 signature of the model by the aggregator (shared/protocol/model-signature.ts), or nil when signing is off. */
  signature: signatureHex.nullable(),
});
export type ModelRef = z.infer<typeof modelRefSchema>;

/** `<root>/round`, retained, QoS 1, msgpack. The aggregator's current instruction to all agents. */
export const roundAnnouncementSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('round'),
  federation: id,
  /** The federation run this announcement belongs to (see runIdSchema). */
  runId: runIdSchema,
  round: uint,
  /** open: work on it; closed: stop, results are no longer accepted; complete: the federation is done. */
  state: z.enum(['open', 'closed', 'complete']),
  /**
   * train: evaluate the base, train, send an update; evaluate: evaluate the base and report only;
   * statistics: run the base forward over the local training images and send its batch
   * normalisation statistics (`bn-stats`), no evaluation (aggregator batchNorm pooled-statistics).
   */
  kind: z.enum(['train', 'evaluate', 'statistics']),
  base: modelRefSchema,
  /**
   * SCAFFOLD rounds (task.scaffold) after the first aggregation: the server variate c that goes with
   * the base model, a tensor bundle (float32, one tensor per federated tensor, meta kind `control`)
   * retained in chunks on `<root>/model/<version>/control/<seq>`. Optional: absent means c = 0.
   */
  control: modelRefSchema.omit({ signature: true }).optional(),
  task: trainTaskSchema,
  classes: z.array(z.string().min(1)).min(2),
  selected: z.array(id),
  minClients: posInt,
  /** Epoch milliseconds after which the aggregator closes the round. */
  deadlineAt: uint,
  /** Chunk size agents must use for their update. */
  chunkBytes: posInt,
  /** How agents encode their update's values: f32 (exact), f16 (half precision), q8 (blockwise 8-bit). */
  encoding: z.enum(updateEncodings),
  /** Send the difference to the base model instead of the weights themselves. */
  delta: z.boolean().default(false),
  /** End-to-end flow control: update chunks an agent may publish beyond those the aggregator has reported stored (0: no limit); progress acks may change it. */
  windowChunks: uint.default(0),
  issuedAt: uint,
});
export type RoundAnnouncement = z.infer<typeof roundAnnouncementSchema>;

const chunkFields = {
  seq: uint,
  total: posInt.max(1 << 22),
  bundleBytes: posInt,
  chunkBytes: posInt,
  crc32: uint.max(0xffffffff),
  data: bytes,
};

/** An update upload's identity, chosen by the agent (fresh for every upload). */
const uploadIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 characters of A-Z a-z 0-9 _ -');

/** `<root>/model/<version>/<seq>`, retained, QoS 1, msgpack. */
export const modelChunkSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('model-chunk'),
  version: uint,
  /** SHA-256 of the whole model bundle. */
  sha256: sha256Hex,
  ...chunkFields,
});

/** `<root>/model/<version>/control/<seq>`, retained, QoS 1, msgpack: SCAFFOLD's server variate c (a tensor bundle). */
export const controlChunkSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('control-chunk'),
  version: uint,
  /** SHA-256 of the whole control bundle. */
  sha256: sha256Hex,
  ...chunkFields,
});

/**
 * `<root>/round/<r>/update/<agent>`, QoS 1, msgpack: one slice of an update bundle. The bundle's
 * SHA-256 comes with `update-done`, so that an agent hashes while it sends instead of before.
 */
const updateChunkSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('update-chunk'),
  round: uint,
  agent: id,
  upload: uploadIdSchema,
  ...chunkFields,
});
export type UpdateChunkMsg = z.infer<typeof updateChunkSchema>;

/** Same topic: the sender has had every chunk acknowledged by the broker and asks for a verdict. */
const updateDoneSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('update-done'),
  round: uint,
  agent: id,
  upload: uploadIdSchema,
  total: posInt,
  bundleBytes: posInt,
  /** SHA-256 of the whole update bundle. */
  sha256: sha256Hex,
  /**
   * This verdict query's number within the upload (1, 2, 3...), echoed in the answer so that the
   * agent can tell a stale answer (to a query sent before its resend) from the newest one.
   * Optional: an agent older than this field sends none and gets none back.
   */
  query: uint.optional(),
});
export type UpdateDoneMsg = z.infer<typeof updateDoneSchema>;

/** Same topic: the global base model evaluated on the agent's local test split, before training. */
const evalReportSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('eval'),
  round: uint,
  agent: id,
  baseVersion: uint,
  metrics: evalMetricsSchema,
  /** Bytes of the base model this agent downloaded for the round (0 when it had it cached). */
  downloadedBytes: uint,
});
export type EvalReportMsg = z.infer<typeof evalReportSchema>;

/** Per-channel moments of one BN layer's input over an agent's training images (shared/fl/bn-statistics.ts). */
const layerMomentsSchema = z.object({
  layer: z.string().min(1).max(256),
  /** Values per channel: images x positions. */
  count: uint,
  mean: z.array(z.number().finite()).max(65536),
  /** Sum of squared deviations from the mean, per channel. */
  m2: z.array(z.number().finite().nonnegative()).max(65536),
});

/** Same topic, statistics rounds: the base model's BN input statistics over the agent's training images. */
const bnStatsSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('bn-stats'),
  round: uint,
  agent: id,
  baseVersion: uint,
  layers: z.array(layerMomentsSchema).max(4096),
  /** Bytes of the base model this agent downloaded for the round (0 when it had it cached). */
  downloadedBytes: uint,
});
export type BnStatsMsg = z.infer<typeof bnStatsSchema>;

export const updateTopicMessageSchema = z.discriminatedUnion('type', [updateChunkSchema, updateDoneSchema, evalReportSchema, bnStatsSchema]);

const UPLOAD_ID = /^[A-Za-z0-9_-]{1,64}$/;
const isUint = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
const isPosInt = (x: unknown): x is number => isUint(x) && x > 0;

/**
 * updateChunkSchema's rules written out by hand, for the message that arrives thousands of times
 * per update (a VGG-19 update is 2,130 chunks): the same checks without the schema machinery's
 * intermediate objects (bench:receive: about a tenth of the aggregator's receive path). Returns
 * the message, or null when any rule fails or it is another message type: the caller then runs the
 * schema, whose error names the field. test/wire-codec.test.ts holds it to the schema's verdicts.
 */
export function updateChunkFastPath(raw: Record<string, unknown>): UpdateChunkMsg | null {
  const { v, type, round, agent, upload, seq, total, bundleBytes, chunkBytes, crc32, data } = raw;
  if (v !== PROTOCOL_VERSION || type !== 'update-chunk') return null;
  if (!isUint(round) || typeof agent !== 'string' || !isValidId(agent) || typeof upload !== 'string' || !UPLOAD_ID.test(upload)) return null;
  if (!isUint(seq) || !isPosInt(total) || total > 1 << 22 || !isPosInt(bundleBytes) || !isPosInt(chunkBytes)) return null;
  if (!isUint(crc32) || crc32 > 0xffffffff || !(data instanceof Uint8Array)) return null;
  // z.instanceof(Uint8Array) types its output as a Uint8Array over an ArrayBuffer; the check itself is this instanceof.
  return { v, type, round, agent, upload, seq, total, bundleBytes, chunkBytes, crc32, data: data as UpdateChunkMsg['data'] };
}
export type UpdateTopicMessage = z.infer<typeof updateTopicMessageSchema>;

/** `<root>/round/<r>/ack/<agent>`, QoS 1, msgpack. */
export const ackSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('ack'),
  round: uint,
  agent: id,
  /** accepted / rejected: the verdict; incomplete: resend `missing`; progress: `stored` chunks are on the aggregator's disk (flow control). */
  status: z.enum(['accepted', 'rejected', 'incomplete', 'progress']),
  /** The upload this answers (null when the aggregator cannot tell). */
  upload: uploadIdSchema.nullable().default(null),
  sha256: sha256Hex.nullable(),
  code: z.string().nullable(),
  reason: z.string().nullable(),
  /** Chunk sequence numbers the aggregator still needs (status incomplete). */
  missing: z.array(uint),
  /** Distinct chunks of the upload stored so far (status progress). */
  stored: uint.default(0),
  /** The sender's flow-control window from now on, chunks (status progress; 0: unchanged). */
  window: uint.default(0),
  /**
   * The `query` of the update-done this ack answers, echoed; absent when that update-done had none
   * and on acks that answer no update-done (progress, CRC notices, verdicts reached on their own).
   * An aggregator older than this field never sends it.
   */
  query: uint.optional(),
});
export type AckMsg = z.infer<typeof ackSchema>;

/** The header inside an update bundle (see shared/bundle/tensor-bundle.ts). */
export const updateMetaSchema = z.object({
  kind: z.literal('update'),
  agent: id,
  round: uint,
  baseVersion: uint,
  sampleCount: posInt,
  epochs: posInt,
  metricsBefore: evalMetricsSchema.nullable(),
  metricsAfter: evalMetricsSchema.nullable(),
  trainMs: uint,
  backend: z.string(),
  /** The values are differences to the base model (the round asked for `delta`). */
  delta: z.boolean().default(false),
  /** Optimizer steps local training took (SCAFFOLD's K). Optional: older agents omit it. */
  steps: posInt.optional(),
});
export type UpdateMeta = z.input<typeof updateMetaSchema>;

/**
 * How pixels are normalised before they enter a model (training/preprocess.ts): unit ([0, 1]),
 * per-image (mean 0, std 1 per image), imagenet ((x - mean) / std, torch-style ImageNet weights),
 * caffe (BGR, 0..255 minus the ImageNet mean: Keras' VGG16/VGG19 weights).
 */
export const normalizationModes = ['unit', 'per-image', 'imagenet', 'caffe'] as const;
export type NormalizationMode = (typeof normalizationModes)[number];

/** The header inside a global model bundle. `topology` is the tfjs layers model topology. */
export const modelMetaSchema = z.object({
  kind: z.literal('model'),
  version: uint,
  round: uint,
  topology: z.record(z.string(), z.unknown()),
  /** Names of the tensors that form the classifier head (for `federate: head`). */
  headTensors: z.array(z.string()),
  classes: z.array(z.string()),
  inputShape: z.array(posInt),
  /** How pixels are normalised before they enter the model (training/preprocess.ts). */
  normalization: z.enum(normalizationModes),
  createdAt: uint,
});
export type ModelMeta = z.infer<typeof modelMetaSchema>;

/** The header inside SCAFFOLD's control bundle (announcement `control`): the model version c goes with. */
export const controlMetaSchema = z.object({
  kind: z.literal('control'),
  version: uint,
});
export type ControlMeta = z.infer<typeof controlMetaSchema>;

// ---- JSON messages (people and MES read these) ----

export const agentStates = ['starting', 'idle', 'waiting-window', 'downloading', 'evaluating', 'training', 'uploading', 'paused', 'error', 'offline'] as const;
export type AgentState = (typeof agentStates)[number];

/** `<root>/agent/<agent>/status`, retained, QoS 1, JSON; also the last will (state offline). */
export const agentStatusSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  agent: id,
  state: z.enum(agentStates),
  round: uint.nullable(),
  /** 0..1 within the current state (training: batches done / batches planned). */
  progress: z.number().min(0).max(1).nullable(),
  detail: z.string().nullable(),
  backend: z.string().nullable(),
  /** Local training and test images; nil until the agent has read its data. Optional: a status without it (a last will set before the data was read) is still valid. */
  samples: z.object({ train: uint, test: uint }).nullable().default(null),
  /** The training window (trigger gate): open, closed or unknown, and why. Absent from older agents. */
  window: z
    .object({ state: z.enum(['open', 'closed', 'unknown']), detail: z.string() })
    .nullable()
    .optional(),
  ts: uint,
});
export type AgentStatus = z.infer<typeof agentStatusSchema>;

/** `<root>/model/latest`, retained, QoS 1, JSON. */
export const modelManifestSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  federation: id,
  /** The federation run that published this model (see runIdSchema). */
  runId: runIdSchema,
  version: uint,
  round: uint,
  sha256: sha256Hex,
  bytes: posInt,
  chunks: posInt,
  chunkBytes: posInt,
  createdAt: uint,
  signature: signatureHex.nullable(),
  /** Accuracy etc. of the model this one replaced, per agent, as the agents reported it. */
  metrics: z.record(z.string(), z.unknown()),
});
export type ModelManifest = z.infer<typeof modelManifestSchema>;
