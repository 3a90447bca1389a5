import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AGGREGATOR_NODE_FLAGS } from '../aggregator/node-flags.js';
import { accessFileSchema, type AccessFile } from '../broker/access.js';
import { mosquittoAvailable, startMosquitto, testPassword, writeAuthFiles } from '../demo/mosquitto.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { cpuMsOf, memoryOf } from './synthetic.js';

/** The processes of bench/transport.ts: brokers, `fedline` services, plain MQTT.js peers, and their memory and CPU. */

const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const PEER = fileURLToPath(new URL('./transport-peer.js', import.meta.url));
/**
 * BENCH_CPU_PROF=DIR: every process writes a V8 CPU profile there (for finding where time goes).
 * BENCH_NODE_FLAGS="--trace-gc ...": further Node flags for every process (flags NODE_OPTIONS refuses).
 */
const EXEC_ARGV = [
  ...(process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : []),
  ...(process.env.BENCH_NODE_FLAGS?.split(/\s+/).filter(Boolean) ?? []),
];

/**
 * Node flags of the receivers: the aggregator runs with those it runs with in production
 * (aggregator/node-flags.ts), and so does the plain MQTT.js subscriber it is compared with (the
 * same V8 settings on both sides of the comparison). BENCH_RECEIVER_FLAGS="..." replaces them on
 * both, "none" drops them (the figures before they were set).
 */
export const RECEIVER_FLAGS: readonly string[] = receiverFlags(process.env.BENCH_RECEIVER_FLAGS);

export function receiverFlags(env: string | undefined): readonly string[] {
  if (env === undefined) return AGGREGATOR_NODE_FLAGS;
  return env.trim() === 'none' ? [] : env.split(/\s+/).filter(Boolean);
}

export interface Broker {
  name: string;
  url: string;
  pid: number;
  stop(): Promise<void>;
}

export type Msg = Record<string, unknown> & { type: string };

/** Up to this many agents per run (agent-01 ...). */
export const MAX_AGENTS = 16;

/**
 * The brokers run as a factory runs them: every client logs in and every publish and subscription
 * is checked against the access file (roles of broker/access.ts). The plain MQTT.js pair of (a)
 * logs in too, with rights on bench/# only.
 */
function benchAccess(tag: string, agents: number): AccessFile {
  return accessFileSchema.parse({
    topicRoot: `fl/bench-${tag}`,
    users: [
      { username: 'aggregator', role: 'aggregator' },
      ...Array.from({ length: agents }, (_, i) => ({ username: agentId(i), role: 'agent' })),
      { username: 'bench-pub', role: 'mes', write: ['bench/#'] },
      { username: 'bench-sub', role: 'mes', read: ['bench/#'] },
    ],
  });
}

export function agentId(i: number): string {
  return `agent-${String(i + 1).padStart(2, '0')}`;
}

/** Login of a benchmark process, passed to the peers in their environment. */
export function loginEnv(user: string): NodeJS.ProcessEnv {
  return { BENCH_MQTT_USER: user, BENCH_MQTT_PASSWORD: testPassword(user) };
}

/** Options of startBroker: logins for `agents` agents (default MAX_AGENTS); an Aedes cluster node (bench/scale.ts). */
export interface BrokerOptions {
  agents?: number;
  cluster?: { redisUrl: string; nodeId: string };
}

export async function startBroker(name: string, dir: string, tag: string, options: BrokerOptions = {}): Promise<Broker> {
  mkdirSync(dir, { recursive: true });
  const access = benchAccess(tag, options.agents ?? MAX_AGENTS);
  if (name === 'mosquitto') {
    const bin = mosquittoAvailable();
    if (!bin) throw new FedlineError(ErrorCodes.TRANSPORT, 'mosquitto is not installed');
    const m = await startMosquitto(bin, dir, { access });
    return { name, url: m.url, pid: m.proc.pid!, stop: () => m.stop() };
  }
  const auth = writeAuthFiles(dir, access);
  const config = join(dir, 'broker.json');
  const cluster = options.cluster ? { cluster: options.cluster } : {};
  writeFileSync(config, JSON.stringify({ host: '127.0.0.1', port: 0, auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile }, ...cluster }));
  const child = await startService(['broker', '--config', config], join(dir, 'broker.log'));
  return { name: options.cluster?.nodeId ?? 'aedes', url: String(child.ready.url), pid: child.proc.pid!, stop: () => child.stop() };
}

export type Service = Awaited<ReturnType<typeof startService>>;

/** A `fedline` service as its own process (like demo/process-group.ts, plus profiling flags). */
export async function startService(
  argv: string[],
  logFile: string,
): Promise<{ proc: ChildProcess; ready: Msg; exited: Promise<number | null>; stop(): Promise<void> }> {
  const fd = openSync(logFile, 'a');
  const proc = fork(CLI, argv, {
    stdio: ['ignore', fd, fd, 'ipc'],
    execArgv: [...EXEC_ARGV, ...(argv[0] === 'aggregator' ? RECEIVER_FLAGS : [])],
    env: { ...process.env, FEDLINE_LOG_LEVEL: process.env.FEDLINE_LOG_LEVEL ?? 'info' },
  });
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

export type Peer = ReturnType<typeof forkPeer>;

/** A bench/transport-peer.ts process (plain MQTT.js publisher or subscriber, or a benchmark agent), or another `script`, and the messages it reports. */
export function forkPeer(
  argv: string[],
  env: NodeJS.ProcessEnv,
  script = PEER,
  nodeFlags: readonly string[] = [],
): { proc: ChildProcess; messages: Msg[]; next(type: string, timeoutMs?: number): Promise<Msg> } {
  const proc = fork(script, argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [...EXEC_ARGV, ...nodeFlags], env: { ...process.env, ...env } });
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
export class MemorySampler {
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
  /**
   * CPU time a process used within [from, to], ms: its CPU counter at each end, interpolated
   * linearly between the samples around it. (Taking the nearest samples outside the window would
   * count up to a sampling interval of whatever the process does next, e.g. the aggregator's
   * FedAvg right after its ack, and the interval stretches when the machine is loaded.)
   */
  cpuMs(pid: number, from: number, to: number): number {
    const mine = this.samples.filter((x) => x.pid === pid);
    const at = (t: number): number => {
      const after = mine.findIndex((x) => x.at >= t);
      if (after < 0) return mine.at(-1)?.cpuMs ?? Number.NaN;
      const b = mine[after]!;
      const a = mine[after - 1];
      if (!a || b.at === a.at) return b.cpuMs;
      return a.cpuMs + ((b.cpuMs - a.cpuMs) * (t - a.at)) / (b.at - a.at);
    };
    return at(to) - at(from);
  }
  stop(): void {
    clearInterval(this.timer);
  }
}
