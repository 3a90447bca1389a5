import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Journal, RoundRecord } from '../aggregator/aggregator.js';
import { FsModelStore } from '../aggregator/model-store.js';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import { accessFileSchema, type AccessFile } from '../broker/access.js';
import { mosquittoAvailable, startMosquitto, testPassword, writeAuthFiles } from '../test/helpers.js';
import { cpuMsOf, denseShapes, memoryOf, parameterCount, vgg19Shapes, writeSyntheticModel } from './synthetic.js';

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
 *   --brokers LIST      aedes,mosquitto (default: both when mosquitto is installed)
 *   --max-inflight N    QoS 1 publishes in flight for agents and the plain publisher (16)
 *   --window N          the aggregator's end-to-end window, chunks (256)
 *   --only one          only (a), (b) and (c) with one agent
 *   --keep              keep the work folder (logs, journals)
 */

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    brokers: { type: 'string' },
    'max-inflight': { type: 'string', default: '16' },
    window: { type: 'string', default: '256' },
    agents: { type: 'string' },
    keep: { type: 'boolean', default: false },
    only: { type: 'string' },
  },
});
const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const PEER = fileURLToPath(new URL('./transport-peer.js', import.meta.url));
/** BENCH_CPU_PROF=DIR: every process writes a V8 CPU profile there (for finding where time goes). */
const EXEC_ARGV = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
const CHUNK_BYTES = 256 * 1024;
const MAX_INFLIGHT = Number(args['max-inflight']);
const WINDOW = Number(args.window);
const BIG = args.quick ? String(20_000_000) : 'vgg19';
const MANY = Number(args.agents ?? (args.quick ? 5 : 10));
const root = mkdtempSync(join(tmpdir(), 'fedline-bench-transport-'));
const say = (s: string) => process.stdout.write(s + '\n');
const MB = 1e6;
const MiB = 2 ** 20;

function shapesOf(model: string) {
  return model === 'vgg19' ? vgg19Shapes() : denseShapes(Number(model));
}

interface Broker {
  name: string;
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** Up to this many agents per run (agent-01 ...). */
const MAX_AGENTS = 16;

/**
 * The brokers run as a factory runs them: every client logs in and every publish and subscription
 * is checked against the access file (roles of broker/access.ts). The plain MQTT.js pair of (a)
 * logs in too, with rights on bench/# only.
 */
function benchAccess(tag: string): AccessFile {
  return accessFileSchema.parse({
    topicRoot: `fl/bench-${tag}`,
    users: [
      { username: 'aggregator', role: 'aggregator' },
      ...Array.from({ length: MAX_AGENTS }, (_, i) => ({ username: agentId(i), role: 'agent' })),
      { username: 'bench-pub', role: 'mes', write: ['bench/#'] },
      { username: 'bench-sub', role: 'mes', read: ['bench/#'] },
    ],
  });
}

function agentId(i: number): string {
  return `agent-${String(i + 1).padStart(2, '0')}`;
}

/** Login of a benchmark process, passed to the peers in their environment. */
function loginEnv(user: string): NodeJS.ProcessEnv {
  return { BENCH_MQTT_USER: user, BENCH_MQTT_PASSWORD: testPassword(user) };
}

async function startBroker(name: string, dir: string, tag: string): Promise<Broker> {
  mkdirSync(dir, { recursive: true });
  const access = benchAccess(tag);
  if (name === 'mosquitto') {
    const bin = mosquittoAvailable();
    if (!bin) throw new Error('mosquitto is not installed');
    const m = await startMosquitto(bin, dir, { access });
    return { name, url: m.url, pid: m.proc.pid!, stop: () => m.stop() };
  }
  const auth = writeAuthFiles(dir, access);
  const config = join(dir, 'broker.json');
  writeFileSync(config, JSON.stringify({ host: '127.0.0.1', port: 0, auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile } }));
  const child = await startService(['broker', '--config', config], join(dir, 'broker.log'));
  return { name: 'aedes', url: String(child.ready.url), pid: child.proc.pid!, stop: () => child.stop() };
}

type Msg = Record<string, unknown> & { type: string };

/** A `fedline` service as its own process (like demo/process-group.ts, plus profiling flags). */
async function startService(argv: string[], logFile: string): Promise<{ proc: ChildProcess; ready: Msg; exited: Promise<number | null>; stop(): Promise<void> }> {
  const fd = openSync(logFile, 'a');
  const proc = fork(CLI, argv, { stdio: ['ignore', fd, fd, 'ipc'], execArgv: EXEC_ARGV, env: { ...process.env, FEDLINE_LOG_LEVEL: process.env.FEDLINE_LOG_LEVEL ?? 'info' } });
  closeSync(fd);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : null))));
  const ready = await new Promise<Msg>((resolve, reject) => {
    proc.on('message', (m: Msg) => m.type === 'ready' && resolve(m));
    exited.then((code) => reject(new Error(`${argv[0]} exited with ${code} before it was ready; see ${logFile}`)));
  });
  return {
    proc,
    ready,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

function forkPeer(argv: string[], env: NodeJS.ProcessEnv): { proc: ChildProcess; messages: Msg[]; next(type: string, timeoutMs?: number): Promise<Msg> } {
  const proc = fork(PEER, argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: EXEC_ARGV, env: { ...process.env, ...env } });
  const messages: Msg[] = [];
  const waiters: { type: string; resolve(m: Msg): void }[] = [];
  proc.on('message', (m: Msg) => {
    if (m.type === 'error') process.stderr.write(`peer ${argv.join(' ')}: ${String(m.message)}\n`);
    const w = waiters.findIndex((x) => x.type === m.type);
    if (w >= 0) waiters.splice(w, 1)[0]!.resolve(m);
    else messages.push(m);
  });
  return {
    proc,
    messages,
    next(type, timeoutMs = 600_000) {
      const i = messages.findIndex((m) => m.type === type);
      if (i >= 0) return Promise.resolve(messages.splice(i, 1)[0]!);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`peer ${argv[0]} sent no ${type} within ${timeoutMs} ms`)), timeoutMs);
        waiters.push({ type, resolve: (m) => (clearTimeout(timer), resolve(m)) });
        proc.once('exit', (code) => reject(new Error(`peer ${argv[0]} exited (code ${code}) before it sent ${type}`)));
      });
    },
  };
}

/** Resident memory of some processes, sampled every 100 ms. */
class MemorySampler {
  private readonly timer: NodeJS.Timeout;
  readonly samples: { at: number; pid: number; rssMiB: number; peakMiB: number; cpuMs: number }[] = [];
  private readonly pids = new Set<number>();
  constructor() {
    this.timer = setInterval(() => this.sample(), 100);
  }
  watch(pid: number | undefined): void {
    if (pid) this.pids.add(pid);
  }
  sample(): void {
    const at = Date.now();
    for (const pid of this.pids) {
      const m = memoryOf(pid);
      if (m && Number.isFinite(m.rssMiB)) this.samples.push({ at, pid, ...m, cpuMs: cpuMsOf(pid) });
    }
  }
  /** Highest VmHWM seen for a process (its peak RSS until the last sample). */
  peak(pid: number): number {
    return this.samples.filter((s) => s.pid === pid).reduce((m, s) => Math.max(m, s.peakMiB), 0);
  }
  /** Highest RSS sampled for a process within [from, to]. */
  maxRss(pid: number, from: number, to: number): number {
    return this.samples.filter((s) => s.pid === pid && s.at >= from && s.at <= to).reduce((m, s) => Math.max(m, s.rssMiB), 0);
  }
  /** CPU time a process used within [from, to] (nearest samples), ms. */
  cpuMs(pid: number, from: number, to: number): number {
    const mine = this.samples.filter((x) => x.pid === pid);
    const before = [...mine].reverse().find((x) => x.at <= from) ?? mine[0];
    const after = mine.find((x) => x.at >= to) ?? mine.at(-1);
    return before && after ? after.cpuMs - before.cpuMs : Number.NaN;
  }
  stop(): void {
    clearInterval(this.timer);
  }
}

async function plainRun(broker: Broker, bytes: number): Promise<{ mbps: number; seconds: number; cpu: Record<string, number> }> {
  const sampler = new MemorySampler();
  sampler.watch(broker.pid);
  const sub = forkPeer(['plain-sub', broker.url, String(bytes)], loginEnv('bench-sub'));
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

interface FederationResult {
  agents: number;
  model: string;
  modelBytes: number;
  train: RoundRecord;
  uploads: Msg[];
  downloads: Msg[];
  aggregatorPeakMiB: number;
  aggregatorPid: number;
  brokerPeakMiB: number;
  brokerMaxRssUploadMiB: number;
  brokerBaseMiB: number;
  seconds: number;
  /** CPU seconds per GB moved, during the one-agent upload: broker, sender (agent), receiver (aggregator). */
  cpu: Record<string, number>;
}

async function federation(broker: Broker, agents: number, model: string, tag: string): Promise<FederationResult> {
  const dir = join(root, `${broker.name}-${tag}`);
  const stateDir = join(dir, 'aggregator');
  mkdirSync(join(dir, 'agents'), { recursive: true });
  mkdirSync(join(dir, 'logs'), { recursive: true });
  const store = new FsModelStore(join(stateDir, 'models'));
  const base = await writeSyntheticModel(store, shapesOf(model), 0);
  if (agents > MAX_AGENTS) throw new Error(`at most ${MAX_AGENTS} agents per run, asked for ${agents}`);
  const ids = Array.from({ length: agents }, (_, i) => agentId(i));
  const config = join(dir, 'aggregator.json');
  writeFileSync(
    config,
    JSON.stringify({
      // A federation (topic root) per run: retained messages of an earlier run cannot interfere.
      federation: `bench-${tag}`,
      mqtt: { url: broker.url, username: 'aggregator', password: testPassword('aggregator') },
      stateDir,
      agents: ids,
      rounds: 1,
      minClients: agents,
      roundDeadlineMs: 1_800_000,
      waitForAgentsMs: 120_000,
      chunkBytes: CHUNK_BYTES,
      maxUpdateBytes: 4 * 2 ** 30,
      windowChunks: WINDOW,
      task: { epochs: 1, batchSize: 32, learningRate: 0.01, optimizer: 'sgd', federated: 'all' },
      model: { architecture: 'small-cnn', inputShape: [224, 224, 3], classes: [...INSPECTION_CLASSES], normalization: 'imagenet' },
      evaluateFinalModel: true,
      exitWhenComplete: true,
    }),
  );
  const sampler = new MemorySampler();
  sampler.watch(broker.pid);
  sampler.sample();
  const brokerBaseMiB = sampler.maxRss(broker.pid, 0, Date.now());
  const started = Date.now();
  const peers: ReturnType<typeof forkPeer>[] = [];
  let child: Awaited<ReturnType<typeof startService>> | null = null;
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
    if (code !== 0) throw new Error(`aggregator exited with ${code}; see ${join(dir, 'logs', 'aggregator.log')}`);
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

const mbps = (bytes: number, ms: number) => bytes / MB / (ms / 1000);
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '-');
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-');

function uploadRate(r: FederationResult): { full: number; accepted: number } {
  const u = r.uploads[0]!;
  return { full: mbps(Number(u.bytes), r.train.aggregatedAt! - Number(u.startedAt)), accepted: mbps(Number(u.bytes), Number(u.verdictAt) - Number(u.startedAt)) };
}

function downloadRate(r: FederationResult): { perAgent: number; total: number; seconds: number } {
  const last = Math.max(...r.downloads.map((d) => Number(d.verifiedAt)));
  const ms = last - r.train.modelStoredAt!;
  return { perAgent: mbps(r.modelBytes, ms), total: mbps(r.modelBytes * r.agents, ms), seconds: ms / 1000 };
}

function flowCheck(r: FederationResult): string {
  const sent = r.uploads.reduce((s, u) => s + Number(u.sentBytes), 0);
  const resent = r.uploads.reduce((s, u) => s + Number(u.resentChunks), 0);
  const verified = r.uploads.filter((u) => u.status === 'accepted' && u.ackSha256 === u.sha256).length;
  const waits = r.uploads.reduce((s, u) => s + Number(u.creditWaits), 0);
  const ok = sent === r.train.bytesUp && resent === 0 && verified === r.agents;
  return `${ok ? 'OK' : 'PROBLEM'}: agents published ${sent} chunk bytes, the aggregator received ${r.train.bytesUp}; ${resent} chunks resent; ${verified}/${r.agents} SHA-256 verified and accepted; flow-control waits ${waits}`;
}

function overhead(r: FederationResult): string {
  const t = r.train;
  const accepted = Math.max(...Object.values(t.acceptedAt ?? {}));
  const last = Math.max(...r.downloads.map((d) => Number(d.verifiedAt)));
  const s = (a: number, b: number) => ((b - a) / 1000).toFixed(2);
  return `${s(t.lastChunkAt!, last).padStart(7)} s = verify+spool ${s(t.lastChunkAt!, accepted)} + average+store ${s(accepted, t.modelStoredAt!)} + publish ${s(t.modelStoredAt!, t.modelPublishedAt!)} + agents fetch ${s(t.modelPublishedAt!, last)}`;
}

async function main(): Promise<void> {
  const bigParams = parameterCount(shapesOf(BIG));
  const mosquitto = mosquittoAvailable();
  const brokers = (args.brokers ?? (mosquitto ? 'aedes,mosquitto' : 'aedes')).split(',');
  say(`fedline bench:transport: ${BIG === 'vgg19' ? 'VGG-19' : 'dense'} model of ${(bigParams / 1e6).toFixed(1)} M float32 parameters; chunks of ${CHUNK_BYTES / 1024} KiB, ${MAX_INFLIGHT} QoS 1 publishes in flight, end-to-end window ${WINDOW} chunks`);
  say(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; brokers: ${brokers.join(', ')}${mosquitto ? '' : ' (mosquitto not installed)'}; work folder ${root}`);
  const results: Record<string, { plain: Awaited<ReturnType<typeof plainRun>> & { runs: number[] }; one: FederationResult; three?: FederationResult; many?: FederationResult; small?: FederationResult }> = {};
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
    say(`\n[${name}] (a) plain MQTT.js publisher -> subscriber, (b)+(c) one agent, (a) again ...`);
    const { plain, plainAfter, one } = await withBroker(name, 'one', async (broker) => ({
      plain: await plainRun(broker, modelBytes),
      one: await federation(broker, 1, BIG, 'one'),
      plainAfter: await plainRun(broker, modelBytes),
    }));
    // (a) before and after (b), averaged: the machine's other load drifts.
    const both = { mbps: (plain.mbps + plainAfter.mbps) / 2, seconds: (plain.seconds + plainAfter.seconds) / 2, cpu: plain.cpu, runs: [plain.mbps, plainAfter.mbps] };
    results[name] = { plain: both, one };
    if (name === 'aedes' && args.only !== 'one') {
      say(`[${name}] 3 agents ...`);
      results[name].three = await withBroker(name, 'three', (b) => federation(b, 3, BIG, 'three'));
      say(`[${name}] ${MANY} agents ...`);
      results[name].many = await withBroker(name, 'many', (b) => federation(b, MANY, BIG, 'many'));
      say(`[${name}] 3 agents, 1 M parameters ...`);
      results[name].small = await withBroker(name, 'small', (b) => federation(b, 3, String(1_000_000), 'small'));
    }
  }

  say('\n(a) broker ceiling, (b) one agent -> aggregator, (c) new model -> every agent; MB = 10^6 bytes');
  say(`${'broker'.padEnd(10)} ${'(a) MB/s'.padStart(9)} ${'(b) MB/s'.padStart(9)} ${'(b)/(a)'.padStart(8)} ${'upload only'.padStart(12)} ${'(c) MB/s'.padStart(9)}   goal (b)/(a) >= 0.8`);
  for (const [name, r] of Object.entries(results)) {
    const b = uploadRate(r.one);
    const c = downloadRate(r.one);
    say(`${name.padEnd(10)} ${f1(r.plain.mbps).padStart(9)} ${f1(b.full).padStart(9)} ${f2(b.full / r.plain.mbps).padStart(8)} ${f1(b.accepted).padStart(12)} ${f1(c.perAgent).padStart(9)}   ${b.full / r.plain.mbps >= 0.8 ? 'met' : 'MISSED'}`);
  }
  say(`  (a) = the mean of a run before and one after (b): ${Object.entries(results).map(([n, r]) => `${n} ${r.plain.runs.map((x) => f1(x)).join(' and ')} MB/s`).join('; ')}.`);
  say('  (b) = update bytes / (update folded into the average at the aggregator - agent starts encoding); "upload only" ends at the agent\'s accepted ack (verified and spooled).');
  say('  (c) = model bytes / (last agent has it verified - model stored); includes publishing the retained chunks to the broker.');
  say('\nCPU seconds per GB moved (Linux utime + stime; the machine\'s other load adds noise): on a machine where each process has a core of its own, the slowest column bounds the rate');
  say(`${'broker'.padEnd(10)} ${'run'.padEnd(22)} ${'broker'.padStart(7)} ${'sender'.padStart(7)} ${'receiver'.padStart(9)} ${'receiver to the ack'.padStart(20)}`);
  for (const [name, r] of Object.entries(results)) {
    say(`${name.padEnd(10)} ${'(a) plain MQTT.js'.padEnd(22)} ${f2(r.plain.cpu.broker!).padStart(7)} ${f2(r.plain.cpu.sender!).padStart(7)} ${f2(r.plain.cpu.receiver!).padStart(9)}`);
    say(`${''.padEnd(10)} ${'(b) agent->aggregator'.padEnd(22)} ${f2(r.one.cpu.broker!).padStart(7)} ${f2(r.one.cpu.sender!).padStart(7)} ${f2(r.one.cpu.receiver!).padStart(9)} ${f2(r.one.cpu.receiverUpload!).padStart(20)}`);
  }
  say('  receiver to the ack: the aggregator until the update is verified and spooled (without FedAvg and the new model).');

  const aedes = results.aedes;
  if (aedes?.three && aedes.many && aedes.small) {
    const goal = (2 * aedes.one.modelBytes) / MiB + 300;
    say(`\npeak RSS, MiB (Aedes; goal for the aggregator: <= 2 x model + 300 MiB = ${goal.toFixed(0)} MiB, and ${MANY} agents within 10% of 3)`);
    say(`${'agents'.padStart(6)} ${'aggregator'.padStart(11)} ${'broker(upload)'.padStart(15)} ${'broker(peak)'.padStart(13)} ${'agent upload'.padStart(13)} ${'agent download'.padStart(15)} ${'all N MB/s up'.padStart(14)} ${'N MB/s down'.padStart(12)}`);
    for (const r of [aedes.one, aedes.three, aedes.many]) {
      const upMax = Math.max(...r.uploads.map((u) => Number(u.peakMiB)));
      const downMax = Math.max(...r.downloads.map((d) => Number(d.peakMiB)));
      const firstStart = Math.min(...r.uploads.map((u) => Number(u.startedAt)));
      const upAll = mbps(r.modelBytes * r.agents, Math.max(...r.uploads.map((u) => Number(u.verdictAt))) - firstStart);
      say(`${String(r.agents).padStart(6)} ${f1(r.aggregatorPeakMiB).padStart(11)} ${f1(r.brokerMaxRssUploadMiB).padStart(15)} ${f1(r.brokerPeakMiB).padStart(13)} ${f1(upMax).padStart(13)} ${f1(downMax).padStart(15)} ${f1(upAll).padStart(14)} ${f1(downloadRate(r).total).padStart(12)}`);
    }
    const ratio = aedes.many.aggregatorPeakMiB / aedes.three.aggregatorPeakMiB;
    say(`  aggregator: ${MANY} agents / 3 agents = ${f2(ratio)} (goal within 10%: ${Math.abs(ratio - 1) <= 0.1 ? 'met' : 'MISSED'}); max ${f1(Math.max(aedes.three.aggregatorPeakMiB, aedes.many.aggregatorPeakMiB))} MiB vs goal ${goal.toFixed(0)} MiB: ${Math.max(aedes.three.aggregatorPeakMiB, aedes.many.aggregatorPeakMiB) <= goal ? 'met' : 'MISSED'}`);
    say(`  broker(upload): its highest RSS while the updates were arriving (it holds the retained base model, ${(aedes.one.modelBytes / MiB).toFixed(0)} MiB, from the start); broker(peak) also the new one.`);
    say(`\nflow control, ${MANY} agents sending at once: ${flowCheck(aedes.many)}`);
    say(`flow control, 3 agents: ${flowCheck(aedes.three)}`);
    say(`\nround overhead, last update chunk received -> new model verified by every agent (3 agents, Aedes):`);
    say(`  ${'1 M params'.padEnd(14)} ${overhead(aedes.small)}`);
    say(`  ${(BIG === 'vgg19' ? '139.6 M params' : `${(bigParams / 1e6).toFixed(0)} M params`).padEnd(14)} ${overhead(aedes.three)}`);
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
