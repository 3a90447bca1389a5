import { readFileSync, rmSync } from 'node:fs';
import type { LayerMoments } from '../shared/fl/bn-statistics.js';
import { join } from 'node:path';
import { pino } from 'pino';
import { EdgeAgent, offlineStatus, type RoundWorkResult } from '../edge-agent/agent.js';
import { ModelCache } from '../edge-agent/model-cache.js';
import { testPassword } from '../demo/mosquitto.js';
import { agentConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { classificationMetrics } from '../shared/fl/classification-metrics.js';
import type { EvalMetrics, TrainTask } from '../shared/protocol/messages.js';
import { createTopics } from '../shared/protocol/topics.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import { connectMqtt } from '../shared/transport/mqtt-connect.js';
import type { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { createLogger } from '../shared/util/logger.js';
import type { GlobalModel, Trainer, TrainResult } from '../training/trainer.js';

/**
 * One agent host of `npm run bench:scale`: many simulated sites in one process, each the real
 * EdgeAgent (edge-agent/agent.ts) with its own MQTT connection, client id, login, last will and
 * model cache, so the bench moves what plants move: the base model fetched from retained chunks
 * (CRC per chunk, SHA-256 while written to the cache), the update encoded and sent with the
 * uplink's flow control, eval reports and status messages. Only training is simulated
 * (BenchTrainer: no images, no tfjs, deterministic weights at once).
 *
 *   node dist/bench/scale-peer.js SPEC.json
 *
 * SPEC: { federation, dir, dropCache?, agents: [{ id, url, urls, seed }] }. Reports to the parent over IPC:
 * ready (all agents started), verified (an agent holds a model version, checked), round-done
 * (RoundWorkResult, with resent chunks), complete (every agent saw the federation end; bytes).
 * Differences from a plant's agent, on purpose: no update journal and a model cache keeping one
 * version (here a few hundred sites share one disk; at a plant each writes its own). With
 * `dropCache` (bench:scale --sites-dir) a site deletes its cached model once it holds it in memory:
 * every download is still written, hashed, synced and read back as at a plant, but a hundred
 * sites' caches neither fill this machine's memory (tmpfs) nor stay on its one disk.
 */

interface HostSpec {
  federation: string;
  dir: string;
  /** Delete each site's cached model once the site holds it in memory (see the comment above). */
  dropCache?: boolean;
  agents: { id: string; url: string; urls: string[]; seed: number }[];
}

const report = (msg: Record<string, unknown>) => process.send?.(msg);

/**
 * Training without training: evaluate reports fixed metrics (and tells the host which model
 * version the agent has verified: the agent evaluates right after fetching it); train adds a
 * small per-site pattern to the base weights in place (the agent sends whole weights, not a delta,
 * so the base arrays are not needed afterwards: one model-sized buffer per site, not two).
 */
export class BenchTrainer implements Trainer {
  readonly backend = 'bench';
  readonly samples: { train: number; test: number };
  private readonly seed: number;
  private readonly onVerified: (version: number) => void;

  constructor(seed: number, onVerified: (version: number) => void) {
    this.seed = seed;
    // Sample counts near each other: the aggregator's sample-claim screen (3 x median) stays quiet.
    this.samples = { train: 100 + (seed % 10), test: 20 };
    this.onVerified = onVerified;
  }

  /** The simulated models have no batch normalisation layers. */
  batchNormStatistics(): Promise<LayerMoments[]> {
    return Promise.resolve([]);
  }

  evaluate(model: GlobalModel): Promise<EvalMetrics> {
    this.onVerified(model.version);
    return Promise.resolve(classificationMetrics([0, 1, 2, 3], [0, 1, 2, 3], 4));
  }

  train(model: GlobalModel, _task: TrainTask, federatedNames: readonly string[]): Promise<TrainResult> {
    const names = new Set(federatedNames);
    const tensors = model.tensors.filter((t) => names.has(t.name));
    for (const t of tensors) {
      const d = t.data;
      // A small change of similar size at every site: the update-norm screen (10 x median) stays quiet.
      for (let i = 0; i < d.length; i++) d[i]! += 1e-4 * (((i + this.seed) % 13) - 6);
    }
    return Promise.resolve({
      tensors,
      sampleCount: this.samples.train,
      metricsAfter: classificationMetrics([0, 1, 2, 3], [0, 1, 2, 3], 4),
      trainMs: 0,
      steps: 1,
    });
  }
}

async function startSite(
  spec: HostSpec,
  site: HostSpec['agents'][number],
  log: ReturnType<typeof createLogger>,
): Promise<{ agent: EdgeAgent; transport: MqttTransport }> {
  const config = parseConfig(
    agentConfigSchema,
    {
      agentId: site.id,
      federation: spec.federation,
      mqtt: { url: site.url, ...(site.urls.length ? { urls: site.urls } : {}), username: site.id, password: testPassword(site.id) },
      stateDir: join(spec.dir, site.id),
      // Never read: BenchTrainer needs no images.
      data: { dir: join(spec.dir, 'no-images') },
      // 300 sites on one machine: the aggregator may take a while to answer each one.
      ackTimeoutMs: 60_000,
    },
    `bench:scale site ${site.id}`,
  );
  const topics = createTopics(`fl/${spec.federation}`);
  const offline = encodeJson({ ...offlineStatus(site.id), ts: Date.now() });
  const transport = await connectMqtt(config.mqtt, `fedline-agent-${site.id}`, log, { topic: topics.status(site.id), payload: offline, qos: 1, retain: true });
  const agent = new EdgeAgent(config, {
    transport,
    cache: new ModelCache(join(config.stateDir, 'models'), log, 0),
    logger: log,
    trainerFor: () =>
      Promise.resolve(
        new BenchTrainer(site.seed, (version) => {
          // The agent evaluates a model right after it read it from its cache into memory.
          if (spec.dropCache) rmSync(join(config.stateDir, 'models'), { recursive: true, force: true });
          report({ type: 'verified', agent: site.id, version, at: Date.now() });
        }),
      ),
  });
  agent.on('round-done', (r: RoundWorkResult) => report({ type: 'round-done', agent: site.id, at: Date.now(), ...r }));
  await agent.start();
  return { agent, transport };
}

async function main(): Promise<void> {
  const spec = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as HostSpec;
  // Warnings of the agents' transfer code (stalls, resends, reconnects) go to the bench's output.
  const log = createLogger({ level: process.env.FEDLINE_LOG_LEVEL ?? 'warn', name: 'bench-scale-host', destination: pino.destination(2) });
  const sites = await Promise.all(spec.agents.map((a) => startSite(spec, a, log.child({ agent: a.id }))));
  let left = sites.length;
  for (const { agent } of sites) {
    agent.once('complete', () => {
      report({ type: 'agent-complete', agent: agent.agentId, ...agent.transferred });
      if (--left > 0) return;
      void (async () => {
        await Promise.all(sites.map((s) => s.agent.idle()));
        report({ type: 'complete' });
        for (const s of sites) await s.agent.stop();
        await Promise.all(sites.map((s) => s.transport.close()));
        process.exit(0);
      })();
    });
  }
  report({ type: 'ready', agents: sites.length });
}

main().catch((err: Error) => {
  report({ type: 'error', message: err.stack ?? err.message });
  process.exit(1);
});
// The parent's end is ours: never outlive the benchmark.
process.on('disconnect', () => process.exit(0));
