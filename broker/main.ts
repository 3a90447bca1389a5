import { readFileSync } from 'node:fs';
import type { BrokerConfig } from '../shared/config/broker-config.js';
import { loadConfigFile } from '../shared/config/config-file.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { AccessPolicy, accessFileSchema } from './access.js';
import { createAuthHooks } from './auth-hooks.js';
import { createBroker, type RunningBroker } from './broker.js';
import { PasswordFile } from './passwords.js';
import { createMetricsRegistry, startMetricsServer, type MetricsServer } from '../shared/observability/metrics-server.js';
import { registerBrokerMetrics } from './metrics.js';

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new FedlineError(ErrorCodes.CONFIG_READ, `cannot read the ${what} ${file}: ${(err as Error).message}`, { file });
  }
}

/** Wire a validated broker config to the embedded Aedes broker: listeners, TLS, logins and access rules. */
export async function startBroker(config: Readonly<BrokerConfig>, logger: Logger): Promise<RunningBroker & { metrics: MetricsServer | null }> {
  const log = logger.child({ module: 'broker' });
  let hooks;
  if (config.auth) {
    const access = new AccessPolicy(loadConfigFile(accessFileSchema, config.auth.accessFile));
    const passwords = config.auth.passwordFile ? PasswordFile.load(config.auth.passwordFile) : null;
    for (const u of passwords?.users() ?? [])
      if (!access.rights(u)) log.warn({ username: u }, `user "${u}" has a password but no role in ${config.auth.accessFile}: it cannot connect`);
    hooks = createAuthHooks({
      access,
      passwords,
      identityFromCertificate: config.tls?.identityFromCertificate ?? false,
      loginThrottle: config.loginThrottle,
      log,
    });
    log.info({ users: access.all().length, topicRoot: access.topicRoot }, 'authentication and access rules on');
  } else {
    log.warn('allowAnonymous: true: any client may connect and publish anything (closed test networks only)');
  }
  const tls = config.tls
    ? {
        port: config.tls.port,
        cert: readPem(config.tls.certFile, 'TLS certificate'),
        key: readPem(config.tls.keyFile, 'TLS key'),
        ...(config.tls.caFile ? { ca: readPem(config.tls.caFile, 'TLS CA bundle') } : {}),
        requireClientCert: config.tls.requireClientCert,
      }
    : undefined;
  const broker = await createBroker({
    host: config.host,
    port: config.port,
    maxClientIdLength: config.maxClientIdLength,
    queueLimit: config.queueLimit,
    connectTimeoutMs: config.connectTimeoutMs,
    stallTimeoutMs: config.stallTimeoutMs,
    packetLimits: { maxPacketBytes: config.maxPacketBytes, maxBytesBeforeLogin: config.maxBytesBeforeLogin },
    logger: log,
    plain: config.plainListener,
    ...(config.cluster
      ? { cluster: { redisUrl: config.cluster.redisUrl, nodeId: config.cluster.nodeId, heartbeatIntervalMs: config.cluster.heartbeatIntervalMs } }
      : {}),
    ...(tls ? { tls } : {}),
    ...(hooks ? { hooks } : {}),
  });
  if (!config.metrics) return { ...broker, metrics: null };
  const registry = createMetricsRegistry('broker');
  registerBrokerMetrics(registry, broker);
  const metrics = await startMetricsServer(config.metrics, registry, () => ({ ok: true, clients: broker.connectedClients() }), log).catch(
    async (err: unknown) => {
      await broker.close();
      throw err;
    },
  );
  return {
    ...broker,
    metrics,
    async close() {
      await metrics.close();
      await broker.close();
    },
  };
}
