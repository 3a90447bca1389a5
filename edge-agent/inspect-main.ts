import { join } from 'node:path';
import type { InspectConfig } from '../shared/config/inspect-config.js';
import type { Logger } from '../shared/util/logger.js';
import { connectMqtt } from '../shared/transport/mqtt-connect.js';
import type { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { loadTf } from '../training/backend.js';
import { createTopics, defaultRoot } from '../shared/protocol/topics.js';
import { InspectionService } from './inspect.js';
import { createMetricsRegistry, startMetricsServer, type MetricsServer } from '../shared/observability/metrics-server.js';
import { registerInspectMetrics } from './inspect-metrics.js';
import { ModelCache } from './model-cache.js';
import { TfjsClassifier } from '../training/tfjs-classifier.js';
import { loadVerifyKey, verifyReleaseSignature } from '../shared/protocol/model-signature.js';

export interface RunningInspection {
  service: InspectionService;
  transport: MqttTransport;
  verdictTopic: string;
  /** /metrics and /healthz, when the config has `metrics`. */
  metrics: MetricsServer | null;
  close(): Promise<void>;
}

/** Wire a validated inspection config to MQTT, the model cache, the watched folder and tfjs. */
export async function startInspection(config: Readonly<InspectConfig>, logger: Logger): Promise<RunningInspection> {
  const topics = createTopics(config.topicRoot ?? defaultRoot(config.federation));
  const station = config.station ?? config.agentId;
  const transport = await connectMqtt(config.mqtt, `fedline-inspect-${station}`.slice(0, 128), logger);
  const log = logger.child({ agent: config.agentId });
  const verifyKey = config.modelPublicKeyFile ? loadVerifyKey(config.modelPublicKeyFile) : null;
  const runtime = await loadTf(config.backend, log);
  const verdictTopic = config.verdictTopic ?? `${topics.root}/inspection/${config.agentId}/verdict`;
  const service = new InspectionService({
    agentId: config.agentId,
    station,
    transport,
    topics,
    cache: new ModelCache(join(config.stateDir, 'models'), log),
    classifierFor: (bundle) => TfjsClassifier.fromBundle(runtime.tf, bundle),
    verdictTopic,
    ...(config.images ? { imagesTopic: config.images.topic ?? `${topics.root}/inspection/${config.agentId}/images` } : {}),
    ...(config.watch ? { watch: config.watch } : {}),
    maxModelBytes: config.maxModelBytes,
    maxQueuedImages: config.maxQueuedImages,
    log,
    ...(config.pinnedModel ? { pinned: config.pinnedModel } : {}),
    ...(verifyKey
      ? {
          verifyRelease: (releaseSeq: number, version: number, sha256: string, signature: string | null) =>
            verifyReleaseSignature(verifyKey, releaseSeq, version, sha256, signature),
        }
      : {}),
  });
  await service.start();
  let metrics: MetricsServer | null = null;
  if (config.metrics) {
    const registry = createMetricsRegistry('inspect');
    registerInspectMetrics(registry, service);
    const health = () => ({ ok: transport.connected, mqtt: transport.connected, modelVersion: service.modelVersion });
    metrics = await startMetricsServer(config.metrics, registry, health, log);
  }
  return {
    service,
    transport,
    verdictTopic,
    metrics,
    async close() {
      await metrics?.close();
      await service.stop();
      await transport.close();
    },
  };
}
