import { scheduledLearningRate } from '../shared/fl/schedule.js';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Journal } from '../aggregator/aggregator.js';
import { FsModelStore } from '../aggregator/model-store.js';
import { writeDemoCredentials } from '../demo/credentials.js';
import { ProcessGroup } from '../demo/process-group.js';
import type { GlobalModel } from '../training/trainer.js';
import type { ArmStrategy } from './rounds.js';
import type { ModelSpec } from '../shared/config/service-config.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { modelMetaSchema, type EvalMetrics, type ModelMeta, type TrainTask } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { createTopics, defaultRoot } from '../shared/protocol/topics.js';
import type { RoundRecord } from './rounds.js';

/**
 * One federated arm over MQTT with real processes, as a factory runs it: the embedded broker
 * (logins and access rules on), the aggregator and one agent per site, each its own OS process
 * (demo/process-group.ts, as the demo starts them), with configs written from the experiment's.
 * The result is read back from the aggregator's journal and model store.
 */

export interface MqttArmOptions {
  /** Folder for this arm's configs, logs and state. */
  dir: string;
  federation: string;
  sites: readonly { id: string; dir: string }[];
  rounds: number;
  task: Omit<TrainTask, 'federated'>;
  learningRateDecay: number;
  federate: 'all' | 'head';
  /** The aggregator's strategy and its options (default fedavg). */
  strategy?: ArmStrategy;
  model: ModelSpec;
  targetAccuracy: number | null;
  data: { testFraction: number; splitSeed: number; cacheMB: number; decoder: 'auto' | 'sharp' | 'js'; augmentation: Record<string, unknown> };
  training: { backend: string; shuffleSeed: number };
  chunkBytes: number;
  roundDeadlineMs: number;
  say: (line: string) => void;
}

export interface MqttArmResult {
  rounds: RoundRecord[];
  final: GlobalModel;
  finalDir: string;
  finalMetrics: Record<string, EvalMetrics>;
  reason: string;
}

type ArmDirs = { config: string; logs: string; state: string };
type Credentials = Awaited<ReturnType<typeof writeDemoCredentials>>;

export async function runFederatedArmOverMqtt(o: MqttArmOptions): Promise<MqttArmResult> {
  const dirs: ArmDirs = { config: join(o.dir, 'config'), logs: join(o.dir, 'logs'), state: join(o.dir, 'state') };
  for (const d of Object.values(dirs)) await rm(d, { recursive: true, force: true });
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
  const group = new ProcessGroup();
  const killOnExit = () => group.killAllNow();
  process.on('exit', killOnExit);
  try {
    const agents = o.sites.map((s) => s.id);
    const topics = createTopics(defaultRoot(o.federation));
    const creds = await writeDemoCredentials(dirs.config, topics.root, [
      { username: 'aggregator', role: 'aggregator', read: [], write: [] },
      ...agents.map((a) => ({ username: a, role: 'agent' as const, read: [], write: [] })),
    ]);
    const brokerConfig = join(dirs.config, 'broker.json');
    await writeFile(brokerConfig, JSON.stringify({ host: '127.0.0.1', port: 0, auth: creds.auth }, null, 2));
    const { ready } = await group.start('broker', ['broker', '--config', brokerConfig], join(dirs.logs, 'broker.log'));
    const url = String(ready.url);
    const stateDir = join(dirs.state, 'aggregator');
    const aggregatorConfig = await writeAggregatorConfig(o, dirs, url, creds, stateDir);
    const { child: aggregator } = await group.start('aggregator', ['aggregator', '--config', aggregatorConfig], join(dirs.logs, 'aggregator.log'));
    o.say(`  aggregator [pid ${aggregator.proc.pid}] and ${agents.length} agent processes on ${url}`);
    for (const site of o.sites) {
      const file = await writeAgentConfig(o, dirs, url, creds, site);
      await group.start(site.id, ['agent', '--config', file], join(dirs.logs, `${site.id}.log`));
    }
    const code = await aggregator.exited;
    if (code !== 0)
      throw new FedlineError(ErrorCodes.PROCESS_EXIT, `the aggregator exited with code ${code}; see ${aggregator.logFile}`, {
        exitCode: code,
        logFile: aggregator.logFile,
      });
    return await readArmResult(o, stateDir);
  } finally {
    await group.stopAll();
    process.off('exit', killOnExit);
  }
}

/** The aggregator's config: every site selected every round, the experiment's task and model. */
async function writeAggregatorConfig(o: MqttArmOptions, dirs: ArmDirs, url: string, creds: Credentials, stateDir: string): Promise<string> {
  const agents = o.sites.map((s) => s.id);
  const file = join(dirs.config, 'aggregator.json');
  await writeFile(
    file,
    JSON.stringify(
      {
        federation: o.federation,
        mqtt: { url, ...creds.login('aggregator') },
        stateDir,
        agents,
        rounds: o.rounds,
        minClients: agents.length,
        roundDeadlineMs: o.roundDeadlineMs,
        waitForAgentsMs: 120_000,
        targetAccuracy: o.targetAccuracy,
        chunkBytes: o.chunkBytes,
        task: { ...o.task, learningRateDecay: o.learningRateDecay, federated: o.federate },
        ...(o.strategy ?? {}),
        model: o.model,
        evaluateFinalModel: true,
        // The sites are the experiment's own generated or given folders; the in-process arms do
        // not screen updates either, so both modes average exactly the same updates.
        maxUpdateNormRatio: null,
        exitWhenComplete: true,
      },
      null,
      2,
    ),
  );
  return file;
}

/** One site's agent config: its folder, always allowed to train. */
async function writeAgentConfig(o: MqttArmOptions, dirs: ArmDirs, url: string, creds: Credentials, site: { id: string; dir: string }): Promise<string> {
  const file = join(dirs.config, `agent-${site.id}.json`);
  await writeFile(
    file,
    JSON.stringify(
      {
        agentId: site.id,
        federation: o.federation,
        mqtt: { url, ...creds.login(site.id) },
        stateDir: join(dirs.state, site.id),
        data: { dir: site.dir, ...o.data },
        training: o.training,
        trigger: { type: 'always' },
      },
      null,
      2,
    ),
  );
  return file;
}

/** The arm's rounds and final model, from the aggregator's journal and model store. */
async function readArmResult(o: MqttArmOptions, stateDir: string): Promise<MqttArmResult> {
  const journal = JSON.parse(await readFile(join(stateDir, 'journal.json'), 'utf8')) as Journal;
  const store = new FsModelStore(join(stateDir, 'models'));
  const finalVersion = journal.finalVersion ?? journal.currentVersion;
  const decoded = decodeBundle<ModelMeta>(await store.readBundle(finalVersion), modelMetaSchema);
  const final: GlobalModel = {
    version: finalVersion,
    sha256: (await store.get(finalVersion))?.sha256 ?? '',
    meta: decoded.header.meta,
    tensors: bundleTensors(decoded),
  };
  const train = journal.rounds.filter((r) => r.kind === 'train');
  const rounds: RoundRecord[] = train.map((r, i) => ({
    round: r.round,
    baseVersion: r.baseVersion,
    newVersion: r.newVersion,
    learningRate: scheduledLearningRate(o.task.learningRate, o.learningRateDecay, i),
    baseMetrics: r.baseMetrics,
    localMetrics: Object.fromEntries(Object.entries(r.localMetrics).filter((e): e is [string, EvalMetrics] => e[1] !== null)),
    sampleCounts: r.sampleCounts,
    trainMs: r.trainMs,
    bytesUp: r.bytesUp,
    bytesDown: r.bytesDown,
  }));
  const evaluated = journal.rounds.filter((r) => r.baseVersion === finalVersion && Object.keys(r.baseMetrics).length > 0).at(-1);
  const last = train.at(-1);
  const reason = last?.outcome === 'target-reached' ? 'target accuracy reached' : `${train.length} rounds done`;
  return { rounds, final, finalDir: store.dir(finalVersion), finalMetrics: evaluated?.baseMetrics ?? {}, reason };
}
