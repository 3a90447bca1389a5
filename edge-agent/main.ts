import { statSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { AgentConfig } from '../shared/config/service-config.js';
import type { ModelMeta } from '../shared/protocol/messages.js';
import { withTimeout } from '../shared/util/async.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import type { Logger } from '../shared/util/logger.js';
import { connectMqtt } from '../shared/transport/mqtt-connect.js';
import { loadVerifyKey, verifyModelSignature } from '../shared/protocol/model-signature.js';
import type { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { loadTf } from '../training/backend.js';
import { createTopics, defaultRoot } from '../shared/protocol/topics.js';
import { EdgeAgent, offlineStatus } from './agent.js';
import { loadDataset } from '../training/image-folder.js';
import { createImageDecoder } from '../training/images.js';
import { ModelCache } from './model-cache.js';
import { TfjsTrainer } from '../training/tfjs-trainer.js';
import type { Trainer } from '../training/trainer.js';
import { UpdateJournal } from './update-journal.js';
import { buildGate } from './triggers/build-gate.js';
import { createMetricsRegistry, startMetricsServer, type MetricsServer } from '../shared/observability/metrics-server.js';
import { registerAgentMetrics } from './agent-metrics.js';

const MAX_LOGGED_PROBLEMS = 100;

export interface RunningAgent {
  agent: EdgeAgent;
  transport: MqttTransport;
  /** /metrics and /healthz, when the config has `metrics`. */
  metrics: MetricsServer | null;
  close(): Promise<void>;
}

/** Wire a validated agent config to MQTT (with an `offline` last will), the model cache, the image folder and tfjs. */
export interface AgentWiringOptions {
  /** Test seam: wrap the trainer (e.g. to make one agent a straggler). */
  wrapTrainer?: (trainer: Trainer) => Trainer;
  /**
   * Replaces the local image trainer: a plant trains through its lines (plant/plant-trainer.ts),
   * reading the base model's bundle from the agent's cache. No image folder is read then.
   */
  trainerFor?: (model: ModelMeta, cache: ModelCache) => Promise<Trainer>;
}

/** The agent's image folder must exist when it starts: a round should not be the first to find out. */
export function checkDataDir(dir: string): void {
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    throw new FedlineError(
      ErrorCodes.DATA,
      `data.dir ${dir} does not exist (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): create it with one folder per class, or fix data.dir in the agent config`,
      { dir },
    );
  }
  if (!isDir) throw new FedlineError(ErrorCodes.DATA, `data.dir ${dir} is not a folder: fix data.dir in the agent config`, { dir });
}

export async function startAgent(config: Readonly<AgentConfig>, logger: Logger, wiring: AgentWiringOptions = {}): Promise<RunningAgent> {
  if (!wiring.trainerFor) checkDataDir(config.data.dir);
  const topics = createTopics(config.topicRoot ?? defaultRoot(config.federation));
  const verifyKey = config.modelPublicKeyFile ? loadVerifyKey(config.modelPublicKeyFile) : null;
  const offline = encodeJson({ ...offlineStatus(config.agentId), ts: Date.now() });
  const transport = await connectMqtt(config.mqtt, `fedline-agent-${config.agentId}`.slice(0, 128), logger, {
    topic: topics.status(config.agentId),
    payload: offline,
    qos: 1,
    retain: true,
  });
  const log = logger.child({ agent: config.agentId });
  let agent: EdgeAgent | null = null;
  const gate = buildGate(config.trigger, {
    transport,
    topics,
    agentId: config.agentId,
    stateDir: config.stateDir,
    log: log.child({ module: 'trigger' }),
    onCommand: (verb, command) => agent?.commandApplied(verb, command),
    onReject: (err, topic) => agent?.rejectInput(err, topic),
  });
  const cache = new ModelCache(join(config.stateDir, 'models'), log);
  const ownTrainer = wiring.trainerFor;
  agent = new EdgeAgent(config, {
    gate,
    transport,
    cache,
    journal: new UpdateJournal(join(config.stateDir, 'uploads')),
    ...(verifyKey
      ? { verifyModel: (version: number, sha256: string, signature: string | null) => verifyModelSignature(verifyKey, version, sha256, signature) }
      : {}),
    logger,
    trainerFor: async (meta) => {
      if (ownTrainer) return ownTrainer(meta, cache);
      const { classes, inputShape, normalization } = meta;
      const runtime = await loadTf(config.training.backend, log);
      const data = await loadDataset({
        dir: config.data.dir,
        classes,
        inputShape: inputShape as [number, number, number],
        testFraction: config.data.testFraction,
        splitSeed: config.data.splitSeed,
        cacheBytes: config.data.cacheMB * 1024 * 1024,
        decoder: await createImageDecoder(config.data.decoder),
      });
      // Every problem is named; past a hundred lines the rest is counted (a folder of odd images should not flood the log).
      for (const problem of data.problems.slice(0, MAX_LOGGED_PROBLEMS)) log.warn({ module: 'data' }, problem);
      if (data.problems.length > MAX_LOGGED_PROBLEMS)
        log.warn({ module: 'data', more: data.problems.length - MAX_LOGGED_PROBLEMS }, 'more image problems not listed');
      const cached = data.train.cached + data.test.cached;
      log.info(
        {
          train: data.counts.train,
          test: data.counts.test,
          classes,
          problems: data.problems.length,
          decoder: data.decoder,
          normalization,
          cached,
          streamed: data.train.count + data.test.count - cached,
        },
        'local images loaded',
      );
      const trainer = new TfjsTrainer(runtime, data, { shuffleSeed: config.training.shuffleSeed, augmentation: config.data.augmentation });
      return wiring.wrapTrainer ? wiring.wrapTrainer(trainer) : trainer;
    },
  });
  await agent.start();
  const started = agent;
  let metrics: MetricsServer | null = null;
  if (config.metrics) {
    const registry = createMetricsRegistry('agent');
    registerAgentMetrics(registry, started, () => started.status);
    const health = () => ({ ok: transport.connected && started.state !== 'error', state: started.state, mqtt: transport.connected });
    metrics = await startMetricsServer(config.metrics, registry, health, log);
  }
  return {
    agent: started,
    transport,
    metrics,
    async close() {
      await metrics?.close();
      await started.stop();
      // A clean DISCONNECT suppresses the last will (MQTT 3.1.1 §3.14.4), so say offline ourselves.
      if (transport.connected) {
        await withTimeout(
          transport.publish(topics.status(config.agentId), encodeJson({ ...offlineStatus(config.agentId), ts: Date.now() }), { qos: 1, retain: true }),
          2000,
          'offline status',
        ).catch(() => undefined);
      }
      await transport.close();
    },
  };
}
