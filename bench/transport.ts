import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Journal } from '../aggregator/aggregator.js';
import { FsModelStore } from '../aggregator/model-store.js';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import { mosquittoAvailable, testPassword } from '../demo/mosquitto.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { denseShapes, memoryOf, parameterCount, vgg19Shapes, writeSyntheticModel } from './synthetic.js';
import {
  agentId,
  forkPeer,
  loginEnv,
  MAX_AGENTS,
  MemorySampler,
  RECEIVER_FLAGS,
  startBroker,
  startService,
  type Broker,
  type Peer,
  type Service,
} from './transport-processes.js';
import { f1, printRates, printScaling, receiverRun, type BenchResults, type FederationResult, type PlainResult } from './transport-report.js';

/**
 * `npm run bench:transport`: how fast fedline moves VGG-19-sized updates (139.6 M float32
 * parameters, 558 MB; synthetic weights, no training) through a broker, next to what the broker
 * itself carries, and how much memory every process needs. Every part is its own OS process on
 * loopback (broker, aggregator = the real `fedline aggregator`, agents, plain MQTT.js peers).
 *
 *  (a) plain MQTT.js publisher -> subscriber: the same bytes, the same chunk size, QoS 1 with the
 *      same window as a fedline agent: the broker's ceiling on this machine;
 *  (b) one fedline agent -> aggregator: encoding, CRC32 + SHA-256, flow control, spooling,
 *      verification and folding into the average, until the new model is stored;
 *  (c) the new global model -> every agent (retained chunks, CRC32, SHA-256, written to a file);
 *  with 3 and 10 agents sending at once: peak RSS of the aggregator, the broker and the agents,
 *  flow control (bytes sent = bytes received, no resend, every SHA-256 verified); round overhead
 *  from the last update chunk to the new model verified by every agent, for 1 M and 139.6 M
 *  parameters. (a), (b), (c) again with Mosquitto.
 *
 *   --quick             a 20 M-parameter model instead of VGG-19, and 5 agents instead of 10
 *   --params N          a dense model of N float32 parameters instead of VGG-19 (e.g. 40000000: 160 MB)
 *   --brokers LIST      aedes,mosquitto (default: both when mosquitto is installed)
 *   --max-inflight N    QoS 1 publishes in flight for agents and the plain publisher (16)
 *   --window N          the aggregator's end-to-end window, chunks (256)
 *   --agents N          agents of the many-agents run (10; --quick 5)
 *   --only one          only (a), (b) and (c) with one agent
 *   --repeat N          (a), (b)+(c), (a) N times per broker, each with a fresh broker; the receiver
 *                       ratio is the median over the N (min and max printed), the tables show the
 *                       run with the median ratio (default 1)
 *
 * The aggregator and the plain subscriber run with the aggregator's production Node flags
 * (aggregator/node-flags.ts); BENCH_RECEIVER_FLAGS="..." replaces them, "none" drops them.
 *   --keep              keep the work folder (logs, journals)
 *   --help              these options
 */

const USAGE = `usage: node dist/bench/transport.js [--quick] [--params N] [--brokers aedes,mosquitto] [--max-inflight N] [--window N] [--agents N] [--only one] [--repeat N] [--keep]
  --quick  a 20 M-parameter model instead of VGG-19, and 5 agents instead of 10 (see the comment at the top of bench/transport.ts)`;

const { values: args } = parseArgs({
  options: {
    help: { type: 'boolean', short: 'h', default: false },
    quick: { type: 'boolean', default: false },
    params: { type: 'string' },
    brokers: { type: 'string' },
    'max-inflight': { type: 'string', default: '16' },
    window: { type: 'string', default: '256' },
    agents: { type: 'string' },
    keep: { type: 'boolean', default: false },
    only: { type: 'string' },
    repeat: { type: 'string', default: '1' },
  },
});
if (args.help) {
  process.stdout.write(USAGE + '\n');
  process.exit(0);
}
const CHUNK_BYTES = 256 * 1024;
const MAX_INFLIGHT = Number(args['max-inflight']);
const WINDOW = Number(args.window);
const BIG = args.params ?? (args.quick ? String(20_000_000) : 'vgg19');
const MANY = Number(args.agents ?? (args.quick ? 5 : 10));
const REPEAT = Number(args.repeat);
if (!Number.isInteger(REPEAT) || REPEAT < 1) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `--repeat wants a whole number >= 1, got ${args.repeat}`);
const root = mkdtempSync(join(tmpdir(), 'fedline-bench-transport-'));
const say = (s: string) => process.stdout.write(s + '\n');
const MB = 1e6;

function shapesOf(model: string) {
  return model === 'vgg19' ? vgg19Shapes() : denseShapes(Number(model));
}

async function plainRun(broker: Broker, bytes: number): Promise<PlainResult> {
  const sampler = new MemorySampler();
  sampler.watch(broker.pid);
  const sub = forkPeer(['plain-sub', broker.url, String(bytes)], loginEnv('bench-sub'), undefined, RECEIVER_FLAGS);
  sampler.watch(sub.proc.pid);
  await sub.next('ready');
  const pub = forkPeer(['plain-pub', broker.url, String(bytes), String(CHUNK_BYTES), String(MAX_INFLIGHT)], loginEnv('bench-pub'));
  sampler.watch(pub.proc.pid);
  const ready = pub.next('ready');
  await ready;
  sampler.sample();
  const sent = await pub.next('plain-sent');
  const got = await sub.next('plain-received');
  sampler.sample();
  sampler.stop();
  const from = Number(sent.startedAt);
  const to = Number(got.lastAt);
  const seconds = (to - from) / 1000;
  const perGB = (pid: number | undefined) => sampler.cpuMs(pid!, from - 1, to + 1) / 1000 / (bytes / 1e9);
  return { mbps: bytes / MB / seconds, seconds, cpu: { broker: perGB(broker.pid), sender: perGB(pub.proc.pid), receiver: perGB(sub.proc.pid) } };
}

async function federation(broker: Broker, agents: number, model: string, tag: string): Promise<FederationResult> {
  const dir = join(root, `${broker.name}-${tag}`);
  const stateDir = join(dir, 'aggregator');
  mkdirSync(join(dir, 'agents'), { recursive: true });
  mkdirSync(join(dir, 'logs'), { recursive: true });
  const store = new FsModelStore(join(stateDir, 'models'));
  const base = await writeSyntheticModel(store, shapesOf(model), 0);
  if (agents > MAX_AGENTS) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `at most ${MAX_AGENTS} agents per run, asked for ${agents}`);
  const ids = Array.from({ length: agents }, (_, i) => agentId(i));
  const config = join(dir, 'aggregator.json');
  writeFileSync(config, JSON.stringify(aggregatorConfigOf(broker, tag, stateDir, ids)));
  const sampler = new MemorySampler();
  sampler.watch(broker.pid);
  sampler.sample();
  const brokerBaseMiB = sampler.maxRss(broker.pid, 0, Date.now());
  const started = Date.now();
  const peers: Peer[] = [];
  let child: Service | null = null;
  try {
    child = await startService(['aggregator', '--config', config], join(dir, 'logs', 'aggregator.log'));
    sampler.watch(child.proc.pid);
    for (let i = 0; i < agents; i++) {
      const peer = forkPeer(['agent', broker.url, `bench-${tag}`, ids[i]!, String(i + 1), model, join(dir, 'agents'), String(MAX_INFLIGHT)], loginEnv(ids[i]!));
      sampler.watch(peer.proc.pid);
      await peer.next('ready');
      peers.push(peer);
    }
    const uploads = await Promise.all(peers.map((p) => p.next('upload')));
    const downloads = await Promise.all(peers.map((p) => p.next('download')));
    const code = await child.exited;
    if (code !== 0) throw new FedlineError(ErrorCodes.ABORTED, `aggregator exited with ${code}; see ${join(dir, 'logs', 'aggregator.log')}`);
    await Promise.all(peers.map((p) => p.next('complete')));
    const journal = JSON.parse(readFileSync(join(stateDir, 'journal.json'), 'utf8')) as Journal;
    const train = journal.rounds.find((r) => r.kind === 'train')!;
    const uploadEnd = Math.max(...uploads.map((u) => Number(u.verdictAt)));
    const uploadStart = Math.min(...uploads.map((u) => Number(u.startedAt)));
    const upBytes = uploads.reduce((x, u) => x + Number(u.bytes), 0) / 1e9;
    const perGB = (pid: number) => sampler.cpuMs(pid, uploadStart, train.aggregatedAt!) / 1000 / upBytes;
    return {
      agents,
      model,
      modelBytes: base.bytes,
      train,
      uploads,
      downloads,
      aggregatorPeakMiB: sampler.peak(child.proc.pid!),
      aggregatorPid: child.proc.pid!,
      brokerPeakMiB: sampler.peak(broker.pid),
      brokerMaxRssUploadMiB: sampler.maxRss(broker.pid, started, uploadEnd),
      brokerBaseMiB,
      seconds: (Date.now() - started) / 1000,
      cpu: {
        broker: perGB(broker.pid),
        sender: peers.reduce((x, p) => x + perGB(p.proc.pid!), 0),
        receiver: perGB(child.proc.pid!),
        receiverUpload: sampler.cpuMs(child.proc.pid!, uploadStart, uploadEnd) / 1000 / upBytes,
      },
    };
  } finally {
    sampler.stop();
    // Peers leave on their own after the federation completes; give them a moment (profiles, logs).
    await Promise.all(peers.map((p) => (p.proc.exitCode !== null ? null : new Promise((r) => (p.proc.once('exit', r), setTimeout(r, 5000))))));
    for (const p of peers) if (p.proc.exitCode === null) p.proc.kill('SIGTERM');
    await child?.stop();
    // The spool and the models are large: free the disk (and page cache) before the next run.
    if (!args.keep) rmSync(dir, { recursive: true, force: true });
  }
}

/** (a) before and after (b), averaged: the machine's other load drifts. */
function bothPlain(plain: PlainResult, plainAfter: PlainResult): BenchResults[string]['plain'] {
  return {
    mbps: (plain.mbps + plainAfter.mbps) / 2,
    seconds: (plain.seconds + plainAfter.seconds) / 2,
    // CPU per GB of (a) averaged too: the goal compares the aggregator with the plain subscriber of this run.
    cpu: Object.fromEntries(Object.keys(plain.cpu).map((k) => [k, (plain.cpu[k]! + plainAfter.cpu[k]!) / 2])),
    runs: [plain.mbps, plainAfter.mbps],
  };
}

/** Of repeated one-agent runs, the one with the median receiver ratio, carrying every run's ratio. */
function medianRun(runs: Omit<BenchResults[string], 'three' | 'many' | 'small'>[]): BenchResults[string] {
  const ratio = (r: (typeof runs)[number]) => receiverRun(r.one, r.plain).ratio;
  const sorted = [...runs].sort((a, b) => ratio(a) - ratio(b));
  return { ...sorted[Math.floor((sorted.length - 1) / 2)]!, receiverRuns: runs.map((r) => receiverRun(r.one, r.plain)) };
}

/** The aggregator of one benchmark run: one round, a federation (topic root) of its own, limits for VGG-19-sized updates. */
function aggregatorConfigOf(broker: Broker, tag: string, stateDir: string, ids: string[]): Record<string, unknown> {
  return {
    // A federation (topic root) per run: retained messages of an earlier run cannot interfere.
    federation: `bench-${tag}`,
    mqtt: { url: broker.url, username: 'aggregator', password: testPassword('aggregator') },
    stateDir,
    agents: ids,
    rounds: 1,
    minClients: ids.length,
    roundDeadlineMs: 1_800_000,
    waitForAgentsMs: 120_000,
    chunkBytes: CHUNK_BYTES,
    maxUpdateBytes: 4 * 2 ** 30,
    windowChunks: WINDOW,
    task: { epochs: 1, batchSize: 32, learningRate: 0.01, optimizer: 'sgd', federated: 'all' },
    model: { architecture: 'small-cnn', inputShape: [224, 224, 3], classes: [...INSPECTION_CLASSES], normalization: 'imagenet' },
    evaluateFinalModel: true,
    exitWhenComplete: true,
  };
}

async function main(): Promise<void> {
  const bigParams = parameterCount(shapesOf(BIG));
  const mosquitto = mosquittoAvailable();
  const brokers = (args.brokers ?? (mosquitto ? 'aedes,mosquitto' : 'aedes')).split(',');
  say(
    `fedline bench:transport: ${BIG === 'vgg19' ? 'VGG-19' : 'dense'} model of ${(bigParams / 1e6).toFixed(1)} M float32 parameters; chunks of ${CHUNK_BYTES / 1024} KiB, ${MAX_INFLIGHT} QoS 1 publishes in flight, end-to-end window ${WINDOW} chunks`,
  );
  say(
    `machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; brokers: ${brokers.join(', ')}${mosquitto ? '' : ' (mosquitto not installed)'}; work folder ${root}`,
  );
  say(`Node flags of the aggregator and the plain subscriber: ${RECEIVER_FLAGS.join(' ') || '(none)'}`);
  const results: BenchResults = {};
  // A fresh broker for every run: retained models of an earlier run would count in the broker's memory.
  const withBroker = async <T>(name: string, tag: string, fn: (b: Broker) => Promise<T>): Promise<T> => {
    const broker = await startBroker(name, join(root, `broker-${name}-${tag}`), tag);
    try {
      return await fn(broker);
    } finally {
      await broker.stop();
    }
  };
  for (const name of brokers) {
    const modelBytes = parameterCount(shapesOf(BIG)) * 4 + 4096;
    const runs: Omit<BenchResults[string], 'three' | 'many' | 'small'>[] = [];
    for (let i = 0; i < REPEAT; i++) {
      say(`\n[${name}] (a) plain MQTT.js publisher -> subscriber, (b)+(c) one agent, (a) again${REPEAT > 1 ? ` (${i + 1} of ${REPEAT})` : ''} ...`);
      // A tag of its own per repetition: a kept work folder (--keep) of one run cannot meet the next.
      const tag = i === 0 ? 'one' : `one-${i + 1}`;
      const { plain, plainAfter, one } = await withBroker(name, tag, async (broker) => ({
        plain: await plainRun(broker, modelBytes),
        one: await federation(broker, 1, BIG, tag),
        plainAfter: await plainRun(broker, modelBytes),
      }));
      runs.push({ plain: bothPlain(plain, plainAfter), one });
    }
    results[name] = medianRun(runs);
    if (name === 'aedes' && args.only !== 'one') {
      say(`[${name}] 3 agents ...`);
      results[name].three = await withBroker(name, 'three', (b) => federation(b, 3, BIG, 'three'));
      say(`[${name}] ${MANY} agents ...`);
      results[name].many = await withBroker(name, 'many', (b) => federation(b, MANY, BIG, 'many'));
      say(`[${name}] 3 agents, 1 M parameters ...`);
      results[name].small = await withBroker(name, 'small', (b) => federation(b, 3, String(1_000_000), 'small'));
    }
  }

  printRates(results, say);
  const aedes = results.aedes;
  if (aedes?.three && aedes.many && aedes.small) {
    const bigLabel = BIG === 'vgg19' ? '139.6 M params' : `${(bigParams / 1e6).toFixed(0)} M params`;
    printScaling({ ...aedes, three: aedes.three, many: aedes.many, small: aedes.small }, MANY, bigLabel, say);
  }
  say(`\npeak RSS of this orchestrating process: ${f1(memoryOf('self')?.peakMiB ?? NaN)} MiB`);
}

main()
  .catch((err: Error) => {
    process.stderr.write(`bench:transport failed: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    if (!args.keep) rmSync(root, { recursive: true, force: true });
    else say(`work folder kept: ${root}`);
  });
