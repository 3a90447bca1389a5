import type { BrokerConfig } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { createBroker, type RunningBroker } from './broker.js';

/** Wire a validated broker config to the embedded Aedes broker. */
export function startBroker(config: Readonly<BrokerConfig>, logger: Logger): Promise<RunningBroker> {
  return createBroker({
    host: config.host,
    port: config.port,
    maxClientIdLength: config.maxClientIdLength,
    queueLimit: config.queueLimit,
    connectTimeoutMs: config.connectTimeoutMs,
    logger: logger.child({ module: 'broker' }),
  });
}
