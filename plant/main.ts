import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startAggregator, type RunningAggregator } from '../aggregator/main.js';
import { startAgent, type RunningAgent } from '../edge-agent/main.js';
import type { PlantConfig } from '../shared/config/plant-config.js';
import { agentConfigSchema, aggregatorConfigSchema, type AgentConfig, type AggregatorConfig } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import type { Logger } from '../shared/util/logger.js';
import { PlantTrainer } from './plant-trainer.js';

export interface RunningPlant {
  /** The plant aggregator, on the plant broker. */
  downstream: RunningAggregator;
  /** The plant as one agent of the headquarters federation. */
  upstream: RunningAgent;
  close(): Promise<void>;
}

/** The plant aggregator's config: the plant's fields, and placeholders for what headquarters decides round by round. */
export function downstreamConfig(config: Readonly<PlantConfig>): AggregatorConfig {
  return parseConfig(
    aggregatorConfigSchema,
    {
      ...config.downstream,
      stateDir: join(config.stateDir, 'downstream'),
      // Never used: every plant round is driven by a headquarters round (Aggregator.runDrivenRound),
      // which brings the base model and the task; the plant never builds a model of its own.
      rounds: 1,
      task: {},
      model: { classes: ['from', 'headquarters'] },
      evaluateFinalModel: false,
      ...(config.metrics ? { metrics: config.metrics } : {}),
    },
    'plant downstream config',
  );
}

/** The plant's agent config at headquarters. */
export function upstreamConfig(config: Readonly<PlantConfig>): AgentConfig {
  const { upstream } = config;
  const stateDir = join(config.stateDir, 'upstream');
  return parseConfig(
    agentConfigSchema,
    {
      ...upstream,
      stateDir,
      // Not read: the plant's trainer is its lines (startAgent's trainerFor seam), not an image folder.
      data: { dir: stateDir },
    },
    'plant upstream config',
  );
}

/**
 * `fedline plant`: the plant aggregator on the plant broker, opened for driven rounds, and the
 * plant's agent on the headquarters broker, whose trainer runs those rounds. The plant connects
 * to both brokers itself, so neither broker needs a bridge for aggregation.
 */
export async function startPlant(config: Readonly<PlantConfig>, logger: Logger): Promise<RunningPlant> {
  const log = logger.child({ plant: config.upstream.agentId });
  const downstream = await startAggregator(downstreamConfig(config), log.child({ side: 'plant' }));
  let upstream: RunningAgent;
  let trainer: PlantTrainer | null = null;
  try {
    await downstream.aggregator.openDriven();
    mkdirSync(join(config.stateDir, 'upstream'), { recursive: true });
    upstream = await startAgent(upstreamConfig(config), log.child({ side: 'headquarters' }), {
      trainerFor: async (_meta, cache) => (trainer = new PlantTrainer(downstream.aggregator, cache)),
    });
  } catch (err) {
    await downstream.close().catch(() => undefined);
    throw err;
  }
  return {
    downstream,
    upstream,
    async close() {
      // The plant round in progress closes without aggregation, then the agent stops, then the plant aggregator.
      trainer?.stop();
      await upstream.close();
      await downstream.close();
    },
  };
}
