import type { AggregatorConfig } from '../shared/config/service-config.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { FedAvg } from './fedavg-strategy.js';
import { NormScreen } from './norm-screen.js';
import type { Strategy } from './strategy.js';

export type StrategyConfig = Pick<AggregatorConfig, 'strategy' | 'task' | 'maxUpdateNormRatio' | 'maxUpdateNorm'>;

/** Strategies by the name the aggregator config's `strategy` field gives. Add a strategy here. */
const strategies: Readonly<Record<string, (config: Readonly<StrategyConfig>) => Strategy>> = {
  fedavg: (config) => new FedAvg(config.task),
};

/**
 * The configured strategy, wrapped in the update-norm screen unless both of its limits are off
 * (maxUpdateNormRatio and maxUpdateNorm null). Throws FL_CONFIG_INVALID for an unknown name.
 */
export function createStrategy(config: Readonly<StrategyConfig>, log: Logger): Strategy {
  const factory = Object.hasOwn(strategies, config.strategy) ? strategies[config.strategy] : undefined;
  if (!factory) {
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `unknown aggregation strategy "${config.strategy}"; known: ${Object.keys(strategies).join(', ')}`);
  }
  const strategy = factory(config);
  const { maxUpdateNormRatio, maxUpdateNorm } = config;
  if (maxUpdateNormRatio === null && maxUpdateNorm === null) return strategy;
  return new NormScreen(strategy, { maxNormRatio: maxUpdateNormRatio, maxNorm: maxUpdateNorm, log });
}
