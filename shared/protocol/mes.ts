import { updateEncodings } from '../bundle/value-encodings.js';
import { z } from 'zod';
import { agentStates, evalMetricsSchema, modelManifestSchema, PROTOCOL_VERSION } from './messages.js';
import { isValidId } from './topics.js';

/**
 * What an MES sees and sends: JSON events on `<root>/events/<type>` (agents add their id as one
 * more level, `<root>/events/<type>/<agent>`, so the broker's ACL can prove who sent them) and
 * JSON commands on `<root>/cmd/<verb>`. docs/topics.md documents every payload with an example;
 * test/mes-schemas.test.ts checks the examples and the events the services really publish
 * against these schemas.
 *
 * Event schemas are strict (what fedline publishes is exactly what is documented); command
 * schemas accept unknown fields (protocol rule: receivers ignore what they do not know).
 */

const id = z.string().refine(isValidId, { message: 'must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit' });
const uint = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);

const envelope = <T extends string>(type: T) => ({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal(type),
  federation: id,
  /** Publication time, epoch ms. */
  ts: uint,
});

export const roundStartedEventSchema = z.strictObject({
  ...envelope('round-started'),
  round: uint,
  kind: z.enum(['train', 'evaluate', 'statistics']),
  baseVersion: uint,
  selected: z.array(id),
  deadlineAt: uint,
  /** True when an aggregator restarted mid-round and continues it. */
  resumed: z.boolean(),
});

/**
 * One round as it happened: the aggregator's journal holds these (aggregator/round-journal.ts
 * derives its RoundRecord type from this schema) and the MES gets each as a round-completed event.
 */
export const roundRecordSchema = z.strictObject({
  round: uint,
  kind: z.enum(['train', 'evaluate', 'statistics']),
  baseVersion: uint,
  selected: z.array(id),
  deadlineAt: uint,
  startedAt: uint,
  closedAt: uint.nullable(),
  outcome: z.enum(['aggregate', 'keep', 'target-reached', 'evaluated']).nullable(),
  reason: z.string().nullable(),
  newVersion: uint.nullable(),
  participants: z.array(id),
  sampleCounts: z.record(z.string(), uint),
  /** The base model evaluated on each agent's local test split (before local training). */
  baseMetrics: z.record(z.string(), evalMetricsSchema),
  /** Each agent's local model after training, on its local test split. */
  localMetrics: z.record(z.string(), evalMetricsSchema.nullable()),
  failures: z.array(z.strictObject({ agent: id, code: z.string(), reason: z.string() })),
  /** Every refused attempt (upload or update), in order, also those of agents whose later attempt was accepted; absent in records of older aggregators. */
  refusals: z
    .array(z.strictObject({ agent: id, upload: z.string().nullable(), code: z.string(), reason: z.string(), at: uint }))
    .max(200)
    .optional(),
  trainMs: z.record(z.string(), uint),
  bytesUp: uint,
  bytesDown: uint,
  aggregateMs: uint.nullable(),
  durationMs: uint.nullable(),
  /** How the round's updates were encoded (f32, f16, q8) and whether as differences to the base. */
  encoding: z.enum(updateEncodings).optional(),
  delta: z.boolean().optional(),
  /** Timeline (ms since the epoch): each accepted update verified and spooled, the last update chunk, FedAvg done, the new model stored (fsynced) and all its chunks published. */
  acceptedAt: z.record(z.string(), uint).optional(),
  lastChunkAt: uint.nullable().optional(),
  aggregatedAt: uint.nullable().optional(),
  modelStoredAt: uint.nullable().optional(),
  modelPublishedAt: uint.nullable().optional(),
});

export const roundCompletedEventSchema = z.strictObject({
  ...envelope('round-completed'),
  ...roundRecordSchema.shape,
});

export const modelPublishedEventSchema = z.strictObject({
  ...envelope('model-published'),
  version: uint,
  round: uint,
  sha256: sha256Hex,
  bytes: uint,
  chunks: uint,
  /** Sample count each agent contributed to this version. */
  contributors: z.record(z.string(), uint),
  /** Each contributor's local model after training, on its local test split. */
  metrics: z.record(z.string(), evalMetricsSchema.nullable()),
  modelDir: z.string(),
});

/** A site's evaluation of a model version as the release gates see it (aggregator/release-policy.ts). */
export const siteReleaseMetricsSchema = z.strictObject({
  accuracy: z.number().min(0).max(1),
  balancedAccuracy: z.number().min(0).max(1),
  /** Recall of the defect classes pooled (release.defectClasses); null when the site's test split has none. */
  defectRecall: z.number().min(0).max(1).nullable(),
  /** The released version's balanced accuracy on this site minus this version's; null when there is nothing to compare. */
  regression: z.number().min(-1).max(1).nullable(),
});

export const modelStages = ['candidate', 'validated', 'rejected', 'released', 'superseded', 'rolled-back'] as const;
export type ModelStage = (typeof modelStages)[number];

/** A gate a site's evaluation failed. */
export const gateFailureSchema = z.strictObject({
  agent: id.nullable(),
  gate: z.enum(['minBalancedAccuracy', 'minDefectRecall', 'maxRegression', 'minSites']),
  value: z.number(),
  limit: z.number(),
});

const gateFields = {
  version: uint,
  round: uint,
  sha256: sha256Hex,
  /** The released version the candidate was compared with (regression gate). */
  against: uint.nullable(),
  sites: z.record(z.string(), siteReleaseMetricsSchema),
};

export const modelValidatedEventSchema = z.strictObject({
  ...envelope('model-validated'),
  ...gateFields,
  /** auto: a model-released event follows; approve: it waits for a `release` command. */
  mode: z.enum(['auto', 'approve']),
});

export const modelRejectedEventSchema = z.strictObject({
  ...envelope('model-rejected'),
  ...gateFields,
  failures: z.array(gateFailureSchema).min(1),
});

const releaseFields = {
  version: uint,
  round: uint,
  sha256: sha256Hex,
  /** Counts every change of the released version; the signed manifest carries it (replay protection). */
  releaseSeq: uint,
  /** `policy` (auto release), or the command's `by`. */
  by: z.string(),
  reason: z.string().nullable(),
  sites: z.record(z.string(), siteReleaseMetricsSchema),
};

export const modelReleasedEventSchema = z.strictObject({
  ...envelope('model-released'),
  ...releaseFields,
  /** The version released before. */
  previous: uint.nullable(),
});

export const modelRolledBackEventSchema = z.strictObject({
  ...envelope('model-rolled-back'),
  ...releaseFields,
  /** The version rolled back from (now stage rolled-back). */
  from: uint,
});

/** `<root>/model/released`, retained, JSON: the version the production lines run, signed (shared/protocol/model-signature.ts signRelease). */
export const releasedManifestSchema = z.strictObject({
  v: z.literal(PROTOCOL_VERSION),
  federation: id,
  version: uint,
  round: uint,
  sha256: sha256Hex,
  bytes: uint.min(1),
  chunks: uint.min(1),
  chunkBytes: uint.min(1),
  createdAt: uint,
  stage: z.literal('released'),
  releaseSeq: uint,
  releasedAt: uint,
  by: z.string(),
  sites: z.record(z.string(), siteReleaseMetricsSchema),
  signature: z
    .string()
    .regex(/^[0-9a-f]{128}$/)
    .nullable(),
});
export type ReleasedManifest = z.infer<typeof releasedManifestSchema>;

export const agentStateEventSchema = z.strictObject({
  ...envelope('agent-state'),
  agent: id,
  state: z.enum(agentStates),
  round: uint.nullable(),
  progress: z.number().min(0).max(1).nullable(),
  detail: z.string().nullable(),
});

export const alertEventSchema = z.strictObject({
  ...envelope('alert'),
  severity: z.enum(['info', 'warning', 'error']),
  code: z.string().min(1),
  message: z.string(),
  agent: id.optional(),
  round: uint.optional(),
});

export const federationCompletedEventSchema = z.strictObject({
  ...envelope('federation-completed'),
  finalVersion: uint,
  reason: z.string(),
  rounds: uint,
  modelDir: z.string(),
});

export const commandVerbs = ['start', 'pause', 'resume', 'stop', 'model-manifest', 'release', 'rollback'] as const;
export type CommandVerb = (typeof commandVerbs)[number];
/** Commands on the model registry (aggregator/release-manager.ts); the others drive the federation's run state. */
export const modelCommandVerbs = ['release', 'rollback'] as const;
export type ModelCommandVerb = (typeof modelCommandVerbs)[number];
export type ControlVerb = Exclude<CommandVerb, ModelCommandVerb>;

/** The federation as the aggregator runs it: rounds go on, no new round starts, or rounds stopped. */
export const federationRunStates = ['running', 'paused', 'stopped', 'complete'] as const;
export type FederationRunState = (typeof federationRunStates)[number];

export const commandResultEventSchema = z.strictObject({
  ...envelope('command-result'),
  verb: z.string(),
  requestId: z.string().nullable(),
  /** accepted: done; rejected: refused (malformed, not allowed now); `detail` says why. */
  status: z.enum(['accepted', 'rejected']),
  detail: z.string(),
  /** Who answers: `aggregator`, or the agent id for an agent's answer to pause/resume. */
  by: z.string(),
  /** The aggregator's run state after the command (null in an agent's answer). */
  federationState: z.enum(federationRunStates).nullable(),
});

export const modelManifestEventSchema = z.strictObject({
  ...envelope('model-manifest'),
  requestId: z.string().nullable(),
  /** The current global model's manifest, as retained on `<root>/model/latest`; null before the first model. */
  manifest: modelManifestSchema.nullable(),
});

export const eventSchemas = {
  'round-started': roundStartedEventSchema,
  'round-completed': roundCompletedEventSchema,
  'model-published': modelPublishedEventSchema,
  'model-validated': modelValidatedEventSchema,
  'model-rejected': modelRejectedEventSchema,
  'model-released': modelReleasedEventSchema,
  'model-rolled-back': modelRolledBackEventSchema,
  'agent-state': agentStateEventSchema,
  alert: alertEventSchema,
  'federation-completed': federationCompletedEventSchema,
  'command-result': commandResultEventSchema,
  'model-manifest': modelManifestEventSchema,
} as const;
export type MesEventType = keyof typeof eventSchemas;

/** `<root>/cmd/<verb>` payload. Every field but `v` is optional. */
export const commandSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  /** Echoed in the command-result / model-manifest event, so the MES can match the answer. */
  requestId: z.string().min(1).max(128).optional(),
  /** Who sent it (operator, MES job), for the logs. */
  by: z.string().max(128).optional(),
  reason: z.string().max(1000).optional(),
  /** pause / resume only: the agents it is meant for (default: all). */
  agents: z.array(id).min(1).optional(),
  /** release (required) / rollback (optional: default the version released before): the model version. */
  version: uint.optional(),
});
export type Command = z.infer<typeof commandSchema>;

/** `<root>/inspection/<agent>/verdict` (configurable): one per image the inspection service took in. */
export const verdictSchema = z.strictObject({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('verdict'),
  station: id,
  agent: id,
  source: z.union([
    z.strictObject({ kind: z.literal('file'), path: z.string() }),
    z.strictObject({ kind: z.literal('mqtt'), topic: z.string(), imageId: z.string().nullable() }),
  ]),
  class: z.string().nullable(),
  classIndex: uint.nullable(),
  confidence: z.number().min(0).max(1).nullable(),
  probabilities: z.record(z.string(), z.number().min(0).max(1)).nullable(),
  modelVersion: uint.nullable(),
  modelSha256: sha256Hex.nullable(),
  /** Why the image has no class (unreadable, queue full); null otherwise. */
  error: z.string().nullable(),
  receivedAt: uint,
  ts: uint,
});
