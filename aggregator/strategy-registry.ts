import type { AggregatorConfig } from '../shared/config/service-config.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { ClippedFedAvg } from './fedavg-clipped-strategy.js';
import { FedAvg } from './fedavg-strategy.js';
import { Median } from './median-strategy.js';
import { NormScreen } from './norm-screen.js';
import { FedProx } from './fedprox-strategy.js';
import { Scaffold } from './scaffold-strategy.js';
import { ServerOptimizer } from './server-optimizer-strategy.js';
import type { Strategy } from './strategy.js';
import { TrimmedMean } from './trimmed-mean-strategy.js';

export type StrategyConfig = Pick<
  AggregatorConfig,
  'strategy' | 'trimFraction' | 'task' | 'maxUpdateNormRatio' | 'maxUpdateNorm' | 'stateDir' | 'serverOptimizer' | 'proxMu' | 'agents'
>;

/** Strategies by the name the aggregator config's `strategy` field gives. Add a strategy here. */
const strategies: Readonly<Record<string, (config: Readonly<StrategyConfig>, log: Logger) => Strategy>> = {
  fedavg: (config) => new FedAvg(config.task),
  'fedavg-clipped': (config, log) => new ClippedFedAvg(config.task, log),
  'trimmed-mean': (config, log) => new TrimmedMean(config.task, config.trimFraction, log),
  median: (config) => new Median(config.task),
  fedprox: (config) => new FedProx(config.task, config.proxMu),
  fedavgm: (config) => new ServerOptimizer('fedavgm', config),
  fedadam: (config) => new ServerOptimizer('fedadam', config),
  fedyogi: (config) => new ServerOptimizer('fedyogi', config),
  scaffold: (config) => new Scaffold(config),
};

/** The names the `strategy` field accepts. */
export const strategyNames: readonly string[] = Object.keys(strategies);

/**
 * The configured strategy, wrapped in the update-norm screen unless both of its limits are off
 * (maxUpdateNormRatio and maxUpdateNorm null). Throws FL_CONFIG_INVALID for an unknown name.
 */
export function createStrategy(config: Readonly<StrategyConfig>, log: Logger): Strategy {
  const factory = Object.hasOwn(strategies, config.strategy) ? strategies[config.strategy] : undefined;
  if (!factory) {
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `unknown aggregation strategy "${config.strategy}"; known: ${Object.keys(strategies).join(', ')}`);
  }
  const strategy = factory(config, log);
  const { maxUpdateNormRatio, maxUpdateNorm } = config;
  if (maxUpdateNormRatio === null && maxUpdateNorm === null) return strategy;
  return new NormScreen(strategy, { maxNormRatio: maxUpdateNormRatio, maxNorm: maxUpdateNorm, log });
}
