import { join } from 'node:path';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import type { Logger } from '../shared/util/logger.js';
import { connectMqtt } from '../shared/transport/mqtt-connect.js';
import { loadSigningKey, signModel, signRelease } from '../shared/protocol/model-signature.js';
import type { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { Aggregator } from './aggregator.js';
import { FsModelStore } from './model-store.js';
import { UpdateSpool } from './update-spool.js';
import { createMetricsRegistry, startMetricsServer, type MetricsServer } from '../shared/observability/metrics-server.js';
import { registerAggregatorMetrics } from './metrics.js';

export interface RunningAggregator {
  aggregator: Aggregator;
  transport: MqttTransport;
  store: FsModelStore;
  /** /metrics and /healthz, when the config has `metrics`. */
  metrics: MetricsServer | null;
  close(): Promise<void>;
}

/** Wire a validated aggregator config to its adapters: MQTT, the model store, the spool, tfjs (initial model only, loaded lazily). */
export async function startAggregator(config: Readonly<AggregatorConfig>, logger: Logger): Promise<RunningAggregator> {
  const signingKey = config.signingKeyFile ? loadSigningKey(config.signingKeyFile) : null;
  const transport = await connectMqtt(config.mqtt, `fedline-aggregator-${config.federation}`.slice(0, 128), logger);
  const store = new FsModelStore(join(config.stateDir, 'models'));
  const spool = new UpdateSpool(join(config.stateDir, 'spool'));
  const aggregator = new Aggregator(config, {
    transport,
    store,
    spool,
    logger,
    ...(signingKey
      ? {
          signModel: (version: number, sha256: string) => signModel(signingKey, version, sha256),
          signRelease: (releaseSeq: number, version: number, sha256: string) => signRelease(signingKey, releaseSeq, version, sha256),
        }
      : {}),
    initialModel: () => initialModelBundle(config, logger),
  });
  let metrics: MetricsServer | null = null;
  if (config.metrics) {
    const registry = createMetricsRegistry('aggregator');
    registerAggregatorMetrics(registry, aggregator as unknown as Parameters<typeof registerAggregatorMetrics>[1]);
    metrics = await startMetricsServer(config.metrics, registry, () => ({ ok: transport.connected, mqtt: transport.connected }), logger);
  }
  return {
    aggregator,
    transport,
    store,
    metrics,
    async close() {
      await metrics?.close();
      await aggregator.stop();
      await transport.close();
    },
  };
}

/**
 * The initial global model (version 0) of the configured architecture. TensorFlow.js is needed
 * only for this (aggregation is plain typed-array math) and is imported here, lazily, so that an
 * aggregator whose store has a model never loads it or the training code.
 */
export async function initialModelBundle(config: Readonly<AggregatorConfig>, logger: Logger): Promise<Uint8Array> {
  const [{ loadTf }, { buildInitialBundle }] = await Promise.all([import('../training/backend.js'), import('../training/initial-model.js')]);
  const { tf } = await loadTf('cpu', logger);
  return buildInitialBundle(tf, config.model, (r) =>
    logger.info(
      { from: config.model.initFrom, loaded: r.loaded.length, keptSeeded: r.kept, unusedInFile: r.unused.length },
      'initial weights: pretrained layers loaded by name; the others keep the seeded init',
    ),
  );
}
