import { z } from 'zod';
import { isValidId } from '../protocol/topics.js';
import { aggregatorConfigSchema, metricsConfigSchema, mqttConfigSchema } from './service-config.js';

const id = z.string().refine(isValidId, { message: 'must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit' });
const posInt = z.number().int().positive();

/**
 * Strategies a plant may use on its lines. The server optimizers (fedavgm, fedadam, fedyogi) keep
 * state from one global version to the next: that belongs at headquarters, which makes the
 * versions. fedprox only sets the task's proxMu, and the task is headquarters' (a headquarters
 * running fedprox passes its proxMu down).
 */
export const plantStrategies = ['fedavg', 'fedavg-clipped', 'trimmed-mean', 'median'] as const;

/**
 * `fedline plant --config FILE` (plant/main.ts): a plant aggregator federating its lines on the
 * plant broker and taking part upstream, at headquarters, as one agent.
 */
export const plantConfigSchema = z.strictObject({
  /** Where the plant keeps its state: upstream/ (the headquarters models it fetched, its update journal) and downstream/ (the plant aggregator's store, spool, journal). */
  stateDir: z.string().min(1),
  /** The headquarters federation, where the plant is one agent. */
  upstream: z.strictObject({
    /** The plant's agent id at headquarters (listed in the headquarters aggregator's `agents`). */
    agentId: id,
    federation: id,
    /** Topic root at headquarters. Default fl/<federation>. */
    topicRoot: z.string().optional(),
    /** The headquarters broker (its URL, or several for failover), with the plant's own login. */
    mqtt: mqttConfigSchema,
    /** Ed25519 public key (PEM) of the headquarters aggregator: when set, only models it signed are federated down. */
    modelPublicKeyFile: z.string().min(1).optional(),
    /** Largest headquarters model accepted, bytes. Default 2 GiB. */
    maxModelBytes: posInt.default(2 * 1024 * 1024 * 1024),
    /** QoS 1 update chunks in flight at once towards headquarters. Default 16. */
    maxInflight: posInt.default(16),
    /** How long to wait for the headquarters aggregator's verdict after sending, before asking again, ms. Default 15000. */
    ackTimeoutMs: posInt.default(15_000),
  }),
  /**
   * The plant aggregator on the plant broker: the aggregator config's fields that concern the
   * lines (broker, topic root, agents, deadlines, encoding, strategy, robustness, release gates,
   * signing). What headquarters decides is not here: the rounds, the task and the model come
   * with each headquarters round and pass down unchanged.
   */
  downstream: aggregatorConfigSchema
    .omit({
      stateDir: true,
      rounds: true,
      task: true,
      model: true,
      targetAccuracy: true,
      evaluateFinalModel: true,
      exitWhenComplete: true,
      serverOptimizer: true,
      strategy: true,
      metrics: true,
      logLevel: true,
    })
    .extend({
      /** fedavg (default), fedavg-clipped, trimmed-mean or median: how the plant combines its lines (see the aggregator's `strategy`). */
      strategy: z.enum(plantStrategies).default('fedavg'),
    }),
  /** /metrics and /healthz of the plant aggregator (as the aggregator's `metrics`). */
  metrics: metricsConfigSchema.optional(),
  logLevel: z.string().optional(),
});
export type PlantConfig = z.infer<typeof plantConfigSchema>;
