import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Journal } from '../aggregator/aggregator.js';
import { FsModelStore } from '../aggregator/model-store.js';
import { testPassword } from '../demo/mosquitto.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import { redisAvailable, startRedis, type RunningRedis } from './scale-processes.js';
import { printFinal, printRow, printRowHeader } from './scale-report.js';
import { mean, meanPhases, measureRounds, type Phases, type ProcessMeasure, type ScaleConfig, type ScaleResult } from './scale-result.js';
import { denseShapes, writeSyntheticModel } from './synthetic.js';
import { agentId, forkPeer, MemorySampler, startBroker, startService, type Broker, type Msg, type Peer, type Service } from './transport-processes.js';

/**
 * `npm run bench:scale`: one federation round with many simulated sites, on one Aedes broker and
 * on a two-node Aedes cluster (Redis), every part its own OS process on loopback: the real
 * `fedline broker` node(s), the real `fedline aggregator`, redis-server, and agent hosts
 * (bench/scale-peer.ts) each running many real EdgeAgents (own MQTT connection, login, model
 * cache) whose training is simulated (instant, deterministic weights). Measured per
 * configuration: round time (round start to the new model verified by every agent) and where it
 * goes, peak RSS and CPU seconds per GB of every process, bytes, lost updates, resent chunks.
 *
 *   --agents LIST              agents per configuration (10,100,300)
 *   --sizes LIST               update (= model) size, MB of float32 weights (1,50)
 *   --nodes LIST               broker nodes: 1, 2 (a cluster over redis-server) (1,2)
 *   --rounds N                 training rounds per configuration (1)
 *   --agents-per-process K     agents per agent-host process (50)
 *   --deadline-s S             the aggregator's round deadline (7200)
 *   --chunk-kib N              chunk size of models and updates, KiB (256, the aggregator's default)
 *   --encoding E               update encoding announced to the agents: f32, f16, q8 (f32, the default)
 *   --repeat N                 run the whole list N times, one pass after the other; the goals take the
 *                              median of the passes, and each pass's figure is printed beside it (1)
 *   --sites-dir DIR            where the simulated sites keep their state (model caches), and each
 *                              site then deletes its cached model once it holds it in memory: default
 *                              the work folder, caches kept. A site at a plant writes its cache to its
 *                              own disk; here a hundred share one, and their writes throttle the
 *                              aggregator's spool (docs/scaling.md). A tmpfs folder (/dev/shm) takes
 *                              the sites' files off this machine's disk: every download is still
 *                              written, synced and read back, in memory, and gone once read. With
 *                              --rounds above 1 a site then fetches each round's base again
 *   --json FILE                results (default: a new file in the temp folder; its path is printed)
 *   --keep                     keep the work folder (logs, journals)
 */

const USAGE = `usage: node dist/bench/scale.js [--agents 10,100,300] [--sizes 1,50] [--nodes 1,2] [--rounds N] [--agents-per-process K] [--deadline-s S] [--chunk-kib N] [--encoding f32|f16|q8] [--repeat N] [--sites-dir DIR] [--json FILE] [--keep]
  (see the comment at the top of bench/scale.ts)`;

const { values: args } = parseArgs({
  options: {
    help: { type: 'boolean', short: 'h', default: false },
    agents: { type: 'string', default: '10,100,300' },
    sizes: { type: 'string', default: '1,50' },
    nodes: { type: 'string', default: '1,2' },
    rounds: { type: 'string', default: '1' },
    'agents-per-process': { type: 'string', default: '50' },
    'deadline-s': { type: 'string', default: '7200' },
    'chunk-kib': { type: 'string', default: '256' },
    encoding: { type: 'string', default: 'f32' },
    repeat: { type: 'string', default: '1' },
    'sites-dir': { type: 'string' },
    json: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
if (args.help) {
  process.stdout.write(USAGE + '\n');
  process.exit(0);
}

/** BENCH_REDIS_ARGS: extra redis-server arguments, space-separated (e.g. to try other client-output-buffer-limit values). */
const REDIS_ARGS = (process.env.BENCH_REDIS_ARGS ?? '').split(' ').filter(Boolean);
const HOST = fileURLToPath(new URL('./scale-peer.js', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'fedline-bench-scale-'));
/** The simulated sites' state: under the work folder, or a folder of its own under --sites-dir. */
const sitesRoot = args['sites-dir'] ? mkdtempSync(join(args['sites-dir'], 'fedline-bench-scale-sites-')) : root;
const sitesDirOf = (federation: string) => join(sitesRoot, federation, 'agents');
const say = (s: string) => process.stdout.write(s + '\n');
const list = (s: string, what: string) =>
  s.split(',').map((x) => {
    const n = Number(x);
    if (!(n > 0)) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `--${what}: ${x} is not a positive number`);
    return n;
  });

function configurations(): ScaleConfig[] {
  const rounds = list(args.rounds, 'rounds')[0]!;
  const agentsPerProcess = list(args['agents-per-process'], 'agents-per-process')[0]!;
  const out: ScaleConfig[] = [];
  for (const sizeMB of list(args.sizes, 'sizes'))
    for (const agents of list(args.agents, 'agents'))
      for (const nodes of list(args.nodes, 'nodes')) {
        if (nodes > 2) throw new FedlineError(ErrorCodes.CONFIG_INVALID, '--nodes: 1 or 2');
        out.push({ agents, sizeMB, nodes, rounds, agentsPerProcess });
      }
  // The small end first: a problem shows within minutes, and the table fills in as it goes.
  return out.sort((a, b) => a.agents * a.sizeMB - b.agents * b.sizeMB || a.nodes - b.nodes);
}

/** The aggregator of one configuration: all agents in every round, nothing closed early, whole f32 weights. */
function aggregatorConfig(c: ScaleConfig, federation: string, brokers: Broker[], stateDir: string, ids: string[], modelBytes: number) {
  return {
    federation,
    mqtt: {
      url: brokers[0]!.url,
      ...(brokers.length > 1 ? { urls: brokers.slice(1).map((b) => b.url) } : {}),
      username: 'aggregator',
      password: testPassword('aggregator'),
    },
    stateDir,
    agents: ids,
    rounds: c.rounds,
    // Every agent's update is awaited: a lost update shows as a round that does not aggregate, not as a smaller average.
    minClients: ids.length,
    roundDeadlineMs: Number(args['deadline-s']) * 1000,
    // Hundreds of agents connecting on two shared cores take a while.
    waitForAgentsMs: 600_000,
    maxUpdateBytes: 2 * modelBytes + 2 ** 20,
    chunkBytes: list(args['chunk-kib'], 'chunk-kib')[0]! * 1024,
    encoding: args.encoding,
    task: { epochs: 1, batchSize: 32, learningRate: 0.01, optimizer: 'sgd', federated: 'all' },
    model: { architecture: 'small-cnn', inputShape: [224, 224, 3], classes: [...INSPECTION_CLASSES], normalization: 'imagenet' },
    evaluateFinalModel: true,
    exitWhenComplete: true,
  };
}

/** Agent hosts of K agents each; agent i connects to node i mod nodes and lists the others for failover. */
function forkHosts(c: ScaleConfig, federation: string, brokers: Broker[], dir: string, ids: string[]): Peer[] {
  const hosts: Peer[] = [];
  for (let h = 0; h * c.agentsPerProcess < ids.length; h++) {
    const agents = ids.slice(h * c.agentsPerProcess, (h + 1) * c.agentsPerProcess).map((id) => {
      const i = ids.indexOf(id);
      const own = brokers[i % brokers.length]!;
      return { id, url: own.url, urls: brokers.filter((b) => b !== own).map((b) => b.url), seed: i + 1 };
    });
    const spec = join(dir, `host-${h}.json`);
    writeFileSync(spec, JSON.stringify({ federation, dir: sitesDirOf(federation), dropCache: sitesRoot !== root, agents }));
    hosts.push(forkPeer([spec], {}, HOST));
  }
  return hosts;
}

function processMeasure(sampler: MemorySampler, pids: number[], from: number, to: number, gb: number): ProcessMeasure {
  const cpuS = pids.reduce((s, pid) => s + sampler.cpuMs(pid, from, to), 0) / 1000;
  return { peakMiB: Math.max(...pids.map((pid) => sampler.peak(pid))), cpuS, cpuSPerGB: cpuS / gb };
}

async function runConfiguration(c: ScaleConfig): Promise<ScaleResult> {
  const federation = `bench-scale-${c.agents}a-${String(c.sizeMB).replace('.', 'p')}mb-${c.nodes}n`;
  const dir = join(root, federation);
  mkdirSync(dir, { recursive: true });
  mkdirSync(sitesDirOf(federation), { recursive: true });
  const began = Date.now();
  const sampler = new MemorySampler();
  let redis: RunningRedis | null = null;
  const brokers: Broker[] = [];
  let hosts: Peer[] = [];
  let aggregator: Service | null = null;
  let failed = true;
  try {
    if (c.nodes > 1) redis = await startRedis(join(dir, 'redis.log'), REDIS_ARGS);
    for (let k = 0; k < c.nodes; k++) {
      const cluster = redis ? { cluster: { redisUrl: redis.url, nodeId: `node-${k + 1}` } } : {};
      brokers.push(await startBroker('aedes', join(dir, `broker-${k + 1}`), federation.slice('bench-'.length), { agents: c.agents, ...cluster }));
    }
    for (const pid of [redis?.pid, ...brokers.map((b) => b.pid)]) sampler.watch(pid);
    const stateDir = join(dir, 'aggregator');
    const model = await writeSyntheticModel(new FsModelStore(join(stateDir, 'models')), denseShapes((c.sizeMB * 1e6) / 4), 0);
    const ids = Array.from({ length: c.agents }, (_, i) => agentId(i));
    hosts = forkHosts(c, federation, brokers, dir, ids);
    for (const h of hosts) sampler.watch(h.proc.pid);
    await Promise.all(hosts.map((h) => h.next('ready', 600_000)));
    const config = join(dir, 'aggregator.json');
    writeFileSync(config, JSON.stringify(aggregatorConfig(c, federation, brokers, stateDir, ids, model.bytes)));
    aggregator = await startService(['aggregator', '--config', config], join(dir, 'aggregator.log'));
    sampler.watch(aggregator.proc.pid);
    const limitMs = (c.rounds + 1) * Number(args['deadline-s']) * 1000 + 600_000;
    const code = await Promise.race([aggregator.exited, new Promise<string>((r) => setTimeout(() => r('timeout'), limitMs).unref())]);
    if (code !== 0)
      throw new FedlineError(
        ErrorCodes.ABORTED,
        `aggregator ${code === 'timeout' ? 'did not finish in time' : `exited with ${code}`}; see ${join(dir, 'aggregator.log')}`,
      );
    await Promise.all(hosts.map((h) => h.next('complete', 300_000)));
    sampler.sample();
    const journal = JSON.parse(readFileSync(join(stateDir, 'journal.json'), 'utf8')) as Journal;
    const messages: Msg[] = hosts.flatMap((h) => h.messages);
    failed = false;
    return summarize(c, journal, messages, model.bytes, sampler, { aggregator: aggregator.proc.pid!, brokers, redis, hosts, began });
  } finally {
    sampler.stop();
    // After a round the hosts stop their agents and exit on their own; a SIGTERM then would lose
    // their CPU profiles (BENCH_CPU_PROF), which are written at exit. After a failure: at once.
    await Promise.all(hosts.map((h) => stopHost(h, failed ? 0 : 60_000)));
    await aggregator?.stop();
    for (const b of brokers) await b.stop();
    await redis?.stop();
    // Spooled updates and hundreds of model caches: free the disk before the next configuration
    // (after a failure only the bulk goes: the logs stay for reading).
    if (!args.keep) {
      rmSync(sitesRoot === root ? sitesDirOf(federation) : join(sitesRoot, federation), { recursive: true, force: true });
      rmSync(join(dir, 'aggregator'), { recursive: true, force: true });
      if (!failed) rmSync(dir, { recursive: true, force: true });
    }
  }
}

/** Wait up to `graceMs` for a host to exit by itself, then end it. */
async function stopHost(h: Peer, graceMs: number): Promise<void> {
  if (h.proc.exitCode !== null || h.proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => h.proc.once('exit', () => resolve()));
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([exited, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
  clearTimeout(timer);
  if (h.proc.exitCode === null && h.proc.signalCode === null) {
    h.proc.kill('SIGTERM');
    await exited;
  }
}

function summarize(
  c: ScaleConfig,
  journal: Journal,
  messages: Msg[],
  modelBytes: number,
  sampler: MemorySampler,
  p: { aggregator: number; brokers: Broker[]; redis: RunningRedis | null; hosts: Peer[]; began: number },
): ScaleResult {
  const rounds = measureRounds(journal, messages, modelBytes);
  const train = journal.rounds.filter((r) => r.kind === 'train');
  const from = Math.min(...train.map((r) => r.startedAt));
  const to = Math.max(...rounds.map((r, i) => train[i]!.startedAt + r.seconds * 1000));
  const fetched = messages.filter((m) => m.type === 'verified' && Number(m.at) >= from && Number(m.at) <= to).length;
  const gbUp = train.reduce((s, r) => s + r.bytesUp, 0) / 1e9;
  const gbDown = (fetched * modelBytes) / 1e9;
  const brokers = p.brokers.map((b) => processMeasure(sampler, [b.pid], from, to, gbUp + gbDown));
  const updateBytes = train[0]!.bytesUp / Math.max(1, train[0]!.participants.length);
  return {
    ...c,
    modelBytes,
    updateBytes,
    hostCount: p.hosts.length,
    roundsMeasured: rounds,
    meanRoundS: mean(rounds.map((r) => r.seconds)),
    bytesPerRound: c.agents * (updateBytes + 2 * modelBytes),
    meanPhases: meanPhases(rounds),
    lost: rounds.reduce((s, r) => s + r.lost, 0) + train.filter((r) => r.outcome !== 'aggregate').length * c.agents,
    resentChunks: rounds.reduce((s, r) => s + r.resentChunks, 0),
    refusals: rounds.reduce((s, r) => s + r.refusals, 0),
    gbUp,
    gbDown,
    agentsDownloadedBytes: messages.filter((m) => m.type === 'agent-complete').reduce((s, m) => s + Number(m.down), 0),
    aggregator: processMeasure(sampler, [p.aggregator], from, to, gbUp),
    brokers,
    brokersCpuSPerGB: brokers.reduce((s, b) => s + b.cpuS, 0) / (gbUp + gbDown),
    brokerRssByPhaseMiB: rssByPhase(
      sampler,
      p.brokers.map((b) => b.pid),
      train[0]!.startedAt,
      rounds[0]!.phases,
    ),
    aggregatorRssByPhaseMiB: [
      sampler.maxRss(p.aggregator, 0, train[0]!.startedAt),
      ...rssByPhase(sampler, [p.aggregator], train[0]!.startedAt, rounds[0]!.phases)[0]!,
    ],
    redis: p.redis ? processMeasure(sampler, [p.redis.pid], from, to, gbUp + gbDown) : null,
    agentHosts: processMeasure(
      sampler,
      p.hosts.map((h) => h.proc.pid!),
      from,
      to,
      gbUp + gbDown,
    ),
    wallS: (Date.now() - p.began) / 1000,
  };
}

/** Highest RSS of each process in the phases of one round (ScaleResult.brokerRssByPhaseMiB). */
function rssByPhase(sampler: MemorySampler, pids: number[], startedAt: number, ph: Phases): number[][] {
  const ends = [ph.baseFetched, ph.lastChunk, ph.modelPublished, ph.newVerified].map((s) => startedAt + s * 1000);
  return pids.map((pid) => ends.map((end, i) => sampler.maxRss(pid, i === 0 ? startedAt : ends[i - 1]!, end)));
}

async function main(): Promise<void> {
  const configs = configurations();
  if (configs.some((c) => c.nodes > 1) && !redisAvailable())
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, 'two broker nodes need redis-server (Debian package redis-server); or run with --nodes 1');
  say(
    `fedline bench:scale: ${configs.length} configuration(s), ${configs[0]!.rounds} training round(s) each, ${configs[0]!.agentsPerProcess} agents per host process, chunks of ${args['chunk-kib']} KiB, ${args.encoding} updates`,
  );
  say(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; work folder ${root}`);
  if (sitesRoot !== root) say(`simulated sites' state (model caches) in ${sitesRoot}`);
  const json = args.json ?? join(tmpdir(), `fedline-bench-scale-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const results: ScaleResult[] = [];
  printRowHeader(say);
  // Passes one after the other (10, 300, 10, 300, ...): the machine's load then weighs on both ends alike.
  const passes = list(args.repeat, 'repeat')[0]!;
  for (const c of Array.from({ length: passes }, () => configs).flat()) {
    const r = await runConfiguration(c);
    results.push(r);
    printRow(r, say);
    // Written after every configuration: a long run stopped half way keeps what it measured.
    writeFileSync(
      json,
      JSON.stringify(
        { machine: { cpus: cpus().length, memGiB: totalmem() / 2 ** 30, node: process.version }, sitesDir: args['sites-dir'] ?? null, results },
        null,
        2,
      ),
    );
  }
  printFinal(results, say);
  say(`\nresults: ${json}`);
  if (results.some((r) => r.lost > 0)) process.exitCode = 2;
}

main()
  .then(() => {
    if (!args.keep) rmSync(root, { recursive: true, force: true });
    else say(`work folder kept: ${root}`);
  })
  // The sites' folder may be memory (tmpfs): never leave it behind, --keep or not, success or not.
  .finally(() => {
    if (sitesRoot !== root) rmSync(sitesRoot, { recursive: true, force: true });
  })
  .catch((err: Error) => {
    process.stderr.write(`bench:scale failed: ${err.stack ?? err.message}\nlogs kept in ${root}\n`);
    process.exitCode = 1;
  });
