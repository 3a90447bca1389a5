import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { freeTcpPort as freePort } from '../shared/util/free-port.js';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { sha256Hex } from '../shared/bundle/tensor-bundle.js';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { createBroker, type RunningBroker } from '../broker/broker.js';
import { startAggregator, type RunningAggregator } from '../aggregator/main.js';
import { startAgent, type RunningAgent } from '../edge-agent/main.js';
import { generateDataset, INSPECTION_CLASSES, PAPER_CLIENTS, type ClientSpec } from '../synthetic-data/generate.js';
import { agentConfigSchema, aggregatorConfigSchema, type AgentConfig, type AggregatorConfig } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';

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

export { freePort };

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
  /** Images per class and site (tinyDataset's perClass). Default 6. */
  dataPerClass?: number;
  minClients?: number;
  roundDeadlineMs?: number;
  waitForAgentsMs?: number;
  chunkBytes?: number;
  logger?: Logger;
  aggregator?: Partial<AggregatorConfig>;
  agent?: Partial<AgentConfig>;
  /** MQTT login of each service (`aggregator` or the agent id), for brokers with access control. */
  auth?: (user: string) => { username: string; password: string };
}

export function aggregatorConfig(o: FederationOptions): AggregatorConfig {
  return parseConfig(
    aggregatorConfigSchema,
    {
      federation: 'test',
      mqtt: { url: o.url, reconnectPeriodMs: 200, ...o.auth?.('aggregator') },
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
      mqtt: { url: o.url, reconnectPeriodMs: 200, ...o.auth?.(agentId) },
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
  await tinyDataset(join(o.dir, 'data'), o.agents, o.dataPerClass);
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

// The local Mosquitto launcher and its auth files live in demo/mosquitto.ts (the benchmarks use them too).
export { mosquittoAvailable, startMosquitto, testAccess, testPassword, writeAuthFiles, type AuthFiles } from '../demo/mosquitto.js';

/** The small CNN at 16 px over the four inspection classes: the pretraining tests' model (with tinyDataset). */
export function tinyPretrainModel() {
  return {
    architecture: 'small-cnn' as const,
    width: 1,
    inputShape: [16, 16, 3] as [number, number, 3],
    classes: ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'],
    seed: 3,
    normalization: 'per-image' as const,
  };
}

/** Every file under a folder, by relative path, with its SHA-256. */
export function treeHashes(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir)) {
      const p = join(dir, e);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(root, p), sha256Hex(readFileSync(p)));
    }
  };
  walk(root);
  return out;
}
