import type { MqttConfig } from '../config/service-config.js';
import { mqttPassword } from '../config/service-config.js';
import type { Logger } from '../util/logger.js';
import { MqttTransport } from './mqtt-transport.js';
import type { LastWill } from './transport.js';

/** Open the MQTT transport described by a config's `mqtt` block. */
export function connectMqtt(config: Readonly<MqttConfig>, clientId: string, logger: Logger, will?: LastWill): Promise<MqttTransport> {
  const password = mqttPassword(config);
  return MqttTransport.connect({
    url: config.url,
    ...(config.urls?.length ? { urls: config.urls } : {}),
    clientId,
    ...(config.username !== undefined ? { username: config.username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(config.caFile ? { caFile: config.caFile } : {}),
    ...(config.certFile ? { certFile: config.certFile } : {}),
    ...(config.keyFile ? { keyFile: config.keyFile } : {}),
    ...(will ? { will } : {}),
    reconnectPeriodMs: config.reconnectPeriodMs,
    connectTimeoutMs: config.connectTimeoutMs,
    keepaliveSec: config.keepaliveSec,
    logger: logger.child({ module: 'mqtt' }),
  });
}
