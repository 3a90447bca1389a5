import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { freeTcpPort as freePort } from '../shared/util/free-port.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { createBroker, type RunningBroker } from '../broker/broker.js';
import { startAggregator, type RunningAggregator } from '../aggregator/main.js';
import { startAgent, type RunningAgent } from '../edge-agent/main.js';
import { generateDataset, INSPECTION_CLASSES, PAPER_CLIENTS, type ClientSpec } from '../synthetic-data/generate.js';
import { agentConfigSchema, aggregatorConfigSchema, parseConfig, type AgentConfig, type AggregatorConfig } from '../shared/config/service-config.js';
import { AccessPolicy, accessFileSchema, renderMosquittoAcl, type AccessFile } from '../broker/access.js';
import { hashPassword } from '../broker/passwords.js';

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

/** Test passwords: one per user, known to the tests. */
export function testPassword(user: string): string {
  return `${user}-test-secret`;
}

/**
 * The test federation's access file (root fl/test): the aggregator, the agents, an MES user
 * (that may also publish the MES line-state topics mes/#) and an auditor (an MES user that may
 * read everything, so tests can see what got through and what did not).
 */
export function testAccess(agents: readonly string[] = ['site-a', 'site-b', 'site-c'], root = 'fl/test'): AccessFile {
  return accessFileSchema.parse({
    topicRoot: root,
    users: [
      { username: 'aggregator', role: 'aggregator' },
      ...agents.map((a) => ({ username: a, role: 'agent', read: ['mes/#'] })),
      ...(agents.includes('site-a')
        ? [
            { username: 'site-a-inspect', role: 'inspector', agent: 'site-a' },
            { username: 'camera-a', role: 'camera', agent: 'site-a' },
          ]
        : []),
      { username: 'mes', role: 'mes', write: ['mes/#'] },
      { username: 'auditor', role: 'mes', read: [`${root}/#`, 'mes/#'] },
    ],
  });
}

export interface AuthFiles {
  accessFile: string;
  passwordFile: string;
  aclFile: string;
  credentials: (user: string) => { username: string; password: string };
}

/** Write the access file, a password file (low PBKDF2 count: tests log in often) and the Mosquitto ACL rendered from it. */
export function writeAuthFiles(dir: string, access: AccessFile = testAccess(), extraUsers: string[] = []): AuthFiles {
  const accessFile = join(dir, 'access.json');
  const passwordFile = join(dir, 'passwd');
  const aclFile = join(dir, 'acl');
  writeFileSync(accessFile, JSON.stringify(access, null, 2));
  const users = [...access.users.map((u) => u.username), ...extraUsers];
  writeFileSync(passwordFile, users.map((u) => `${u}:${hashPassword(testPassword(u), 1000)}`).join('\n') + '\n');
  writeFileSync(aclFile, renderMosquittoAcl(new AccessPolicy(access), accessFile));
  return { accessFile, passwordFile, aclFile, credentials: (user) => ({ username: user, password: testPassword(user) }) };
}

export interface MosquittoOptions {
  /** Users and rights (default testAccess()); written as password_file and acl_file. */
  access?: AccessFile;
  /** Users with a password but no line in the ACL. */
  extraUsers?: string[];
  /** An extra TLS listener. */
  tls?: { cert: string; key: string; ca: string; requireCertificate: boolean; identityAsUsername: boolean };
  /** Listen on this port instead of a free one (a restart on the same address). */
  port?: number;
}

export interface RunningMosquitto {
  url: string;
  port: number;
  tlsUrl: string | null;
  proc: ChildProcess;
  auth: AuthFiles;
  stop(): Promise<void>;
  /** SIGKILL: a crash, no chance to save the persistence file. */
  kill(): Promise<void>;
}

/**
 * Start Mosquitto with the repository's mosquitto.conf, changed only where a test must: the
 * listener (a free loopback port), the persistence/log locations, and the password and ACL files
 * (a temp folder, made from the test access file by the same code as `fedline acl`).
 */
export async function startMosquitto(bin: string, dir: string, options: MosquittoOptions = {}): Promise<RunningMosquitto> {
  const port = options.port ?? (await freePort());
  const auth = writeAuthFiles(dir, options.access ?? testAccess(), options.extraUsers);
  const original = readFileSync(join(REPO_ROOT, 'mosquitto.conf'), 'utf8');
  let conf = original
    .split('\n')
    .map((line) => {
      if (/^\s*listener\s+\d+/.test(line)) return `listener ${port} 127.0.0.1`;
      if (/^\s*persistence_location\s/.test(line)) return `persistence_location ${dir}/`;
      if (/^\s*log_dest\s/.test(line)) return 'log_dest stderr';
      if (/^\s*password_file\s/.test(line)) return `password_file ${auth.passwordFile}`;
      if (/^\s*acl_file\s/.test(line)) return `acl_file ${auth.aclFile}`;
      if (/^\s*(pid_file|user)\s/.test(line)) return `# (test) ${line}`;
      return line;
    })
    .join('\n');
  // Started as root, Mosquitto drops to the `mosquitto` user, which cannot read our 0700 temp folder.
  if (process.getuid?.() === 0) conf = `user root\n${conf}`;
  let tlsPort: number | null = null;
  if (options.tls) {
    tlsPort = await freePort();
    const t = options.tls;
    conf += `\nlistener ${tlsPort} 127.0.0.1\ncertfile ${t.cert}\nkeyfile ${t.key}\ncafile ${t.ca}\nrequire_certificate ${t.requireCertificate}\nuse_identity_as_username ${t.identityAsUsername}\n`;
  }
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
    tlsUrl: tlsPort !== null ? `mqtts://127.0.0.1:${tlsPort}` : null,
    proc,
    auth,
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
