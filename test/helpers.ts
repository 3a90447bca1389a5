import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { createBroker, type RunningBroker } from '../broker/broker.js';
import { startAggregator, type RunningAggregator } from '../aggregator/main.js';
import { startAgent, type RunningAgent } from '../edge-agent/main.js';
import { generateDataset, INSPECTION_CLASSES, PAPER_CLIENTS, type ClientSpec } from '../dataset/synth.js';
import { agentConfigSchema, aggregatorConfigSchema, parseConfig, type AgentConfig, type AggregatorConfig } from '../shared/config.js';

export const REPO_ROOT = new URL('../../', import.meta.url).pathname;

export function tempDir(prefix: string): { path: string; cleanup(): void } {
  const path = mkdtempSync(join(tmpdir(), `fedline-${prefix}-`));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** A pino logger that keeps every line in memory, so tests can assert what was logged. */
export function captureLogger(level = 'info'): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level }, stream), lines };
}

export async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 30_000, intervalMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

/** Tiny per-agent image folders (16x16 px, a handful per class), from the demo's generator. */
export async function tinyDataset(dir: string, agents: readonly string[], perClass = 6, size = 16): Promise<void> {
  const clients: ClientSpec[] = agents.map((name, i) => ({
    ...PAPER_CLIENTS[i % PAPER_CLIENTS.length]!,
    name,
    counts: { OKAY: perClass + 2 * i, NOT_OKAY: perClass, HIDDEN: perClass, EMPTY: perClass },
  }));
  await generateDataset({ out: dir, seed: 7, size, clients });
}

export interface FederationOptions {
  url: string;
  dir: string;
  agents: string[];
  /** Agents the aggregator knows besides those started here (e.g. a rogue test client). */
  extraMembers?: string[];
  rounds?: number;
  minClients?: number;
  roundDeadlineMs?: number;
  waitForAgentsMs?: number;
  chunkBytes?: number;
  logger?: Logger;
  aggregator?: Partial<AggregatorConfig>;
  agent?: Partial<AgentConfig>;
}

export function aggregatorConfig(o: FederationOptions): AggregatorConfig {
  return parseConfig(
    aggregatorConfigSchema,
    {
      federation: 'test',
      mqtt: { url: o.url, reconnectPeriodMs: 200 },
      stateDir: join(o.dir, 'aggregator'),
      agents: [...o.agents, ...(o.extraMembers ?? [])],
      rounds: o.rounds ?? 1,
      minClients: o.minClients ?? o.agents.length,
      roundDeadlineMs: o.roundDeadlineMs ?? 120_000,
      waitForAgentsMs: o.waitForAgentsMs ?? 30_000,
      chunkBytes: o.chunkBytes ?? 4096,
      task: { epochs: 1, batchSize: 8, learningRate: 0.01, optimizer: 'adam', federated: 'all' },
      model: { architecture: 'small-cnn', inputShape: [16, 16, 3], classes: [...INSPECTION_CLASSES], seed: 3 },
      ...o.aggregator,
    },
    'test aggregator config',
  );
}

export function agentConfig(o: FederationOptions, agentId: string): AgentConfig {
  return parseConfig(
    agentConfigSchema,
    {
      agentId,
      federation: 'test',
      mqtt: { url: o.url, reconnectPeriodMs: 200 },
      stateDir: join(o.dir, agentId),
      data: { dir: join(o.dir, 'data', agentId), testFraction: 0.25, splitSeed: 1 },
      training: { backend: 'cpu', shuffleSeed: 1 },
      ackTimeoutMs: 3000,
      ...o.agent,
    },
    `test agent config ${agentId}`,
  );
}

/** Aggregator and agents in this process, talking MQTT to `url`. */
export async function startFederation(o: FederationOptions): Promise<{ aggregator: RunningAggregator; agents: RunningAgent[]; stop(): Promise<void> }> {
  const logger = o.logger ?? pino({ level: 'silent' });
  await tinyDataset(join(o.dir, 'data'), o.agents);
  const aggregator = await startAggregator(aggregatorConfig(o), logger);
  const agents: RunningAgent[] = [];
  for (const a of o.agents) agents.push(await startAgent(agentConfig(o, a), logger));
  return {
    aggregator,
    agents,
    async stop() {
      for (const a of agents) await a.close().catch(() => undefined);
      await aggregator.close().catch(() => undefined);
    },
  };
}

export function startAedes(): Promise<RunningBroker> {
  return createBroker({ host: '127.0.0.1', port: 0 });
}

export function mosquittoAvailable(): string | null {
  for (const bin of ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', 'mosquitto']) {
    const r = spawnSync(bin, ['-h'], { encoding: 'utf8' });
    if (!r.error) return bin;
  }
  return null;
}

/**
 * Start Mosquitto with the repository's mosquitto.conf, changed only where a test must: the
 * listener (a free loopback port) and the persistence/log locations (a temp folder).
 */
export async function startMosquitto(bin: string, dir: string, fixedPort?: number): Promise<{ url: string; port: number; proc: ChildProcess; stop(): Promise<void>; kill(): Promise<void> }> {
  const port = fixedPort ?? (await freePort());
  const original = readFileSync(join(REPO_ROOT, 'mosquitto.conf'), 'utf8');
  const conf = original
    .split('\n')
    .map((line) => {
      if (/^\s*listener\s+\d+/.test(line)) return `listener ${port} 127.0.0.1`;
      if (/^\s*persistence_location\s/.test(line)) return `persistence_location ${dir}/`;
      if (/^\s*log_dest\s/.test(line)) return 'log_dest stderr';
      if (/^\s*(pid_file|user)\s/.test(line)) return `# (test) ${line}`;
      return line;
    })
    .join('\n');
  const file = join(dir, 'mosquitto.conf');
  writeFileSync(file, conf);
  const proc = spawn(bin, ['-c', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  await waitFor(`mosquitto on port ${port} (stderr: ${stderr})`, async () => {
    if (proc.exitCode !== null) throw new Error(`mosquitto exited with ${proc.exitCode}: ${stderr}`);
    return new Promise<boolean>((resolve) => {
      const s = new Socket();
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
      s.connect(port, '127.0.0.1');
    });
  }, 10_000);
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    proc,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await exited;
    },
    async kill() {
      if (proc.exitCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}
