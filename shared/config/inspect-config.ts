import { z } from 'zod';
import { backendPreferences, metricsConfigSchema, mqttConfigSchema } from './service-config.js';
import { isValidId } from '../protocol/topics.js';

/**
 * `fedline inspect --config FILE`: the inspection service of an edge box. Validated at start-up
 * (unknown keys refused); relative paths are relative to the file (shared/config/service-config.ts loadConfigFile).
 */
const id = z.string().refine(isValidId, { message: 'must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit' });
const topic = z
  .string()
  .min(1)
  .refine((t) => !t.includes('+') && !t.includes('#'), { message: 'must be a topic without wildcards' });

export const inspectConfigSchema = z
  .strictObject({
    /** The edge agent this service belongs to: default topics are <root>/inspection/<agentId>/... */
    agentId: id,
    federation: id,
    topicRoot: z.string().optional(),
    /** Names the inspection station in every verdict (several stations may serve one agent). Default: agentId. */
    station: id.optional(),
    mqtt: mqttConfigSchema,
    /** Model cache. */
    stateDir: z.string().min(1),
    /** A folder to watch for new images (.png, .jpg, .jpeg). Write each image under a temporary name and rename it into place. */
    watch: z
      .strictObject({
        dir: z.string().min(1),
        /** Move each classified image here (keeps the watch folder small; nothing is classified twice after a restart). */
        archiveDir: z.string().min(1).optional(),
        /** How long a new file's size must stay the same before it is read, ms. Default 200. */
        settleMs: z.number().int().nonnegative().default(200),
        /** Look through the folder this often besides the file-system events, ms. Default 10000. */
        rescanMs: z.number().int().positive().default(10_000),
      })
      .optional(),
    /**
     * Images arriving over MQTT: raw PNG/JPEG bytes on `topic` or `topic/<imageId>`.
     * Default topic <root>/inspection/<agentId>/images.
     */
    images: z.strictObject({ topic: topic.optional() }).optional(),
    /** Where verdicts go (JSON, QoS 1). Default <root>/inspection/<agentId>/verdict. */
    verdictTopic: topic.optional(),
    /** tfjs backend, the agent's choices (training.backend): auto, tensorflow, wasm, cpu. */
    backend: z.enum(backendPreferences).default('auto'),
    /** Largest global model accepted, bytes. Default 2 GiB. */
    maxModelBytes: z
      .number()
      .int()
      .positive()
      .default(2 * 1024 * 1024 * 1024),
    /** Ed25519 public key (PEM) of the aggregator: when set, only releases it signed are used. */
    modelPublicKeyFile: z.string().min(1).optional(),
    /**
     * Run this model version only, never switching (a line qualified on one version). The SHA-256
     * (from `fedline models`) names the exact bundle. It is taken from the model cache, or downloaded
     * when the aggregator releases it. Default: follow the released version.
     */
    pinnedModel: z
      .strictObject({
        version: z.number().int().nonnegative(),
        sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be a lowercase hex SHA-256'),
      })
      .optional(),
    /** Images waiting at most (an image beyond it is refused with an error verdict). Default 10000. */
    maxQueuedImages: z.number().int().positive().default(10_000),
    metrics: metricsConfigSchema.optional(),
    logLevel: z.string().optional(),
  })
  .refine((c) => c.watch !== undefined || c.images !== undefined, { message: 'give "watch" (a folder), "images" (an MQTT topic) or both', path: ['watch'] });
export type InspectConfig = z.infer<typeof inspectConfigSchema>;
