import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AccessPolicy, accessFileSchema, renderMosquittoAcl, type AccessFile } from '../broker/access.js';
import { hashPassword } from '../broker/passwords.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { freeTcpPort } from '../shared/util/free-port.js';

/**
 * A local Mosquitto with logins and access rules, for the tests and the benchmarks (bench/transport.ts):
 * the same broker configuration a factory runs (the repository's mosquitto.conf), on a free
 * loopback port, with known passwords. Not for production: the passwords are predictable.
 */

/** The repository's mosquitto.conf (this file is dist/demo/mosquitto.js once built). */
const MOSQUITTO_CONF = fileURLToPath(new URL('../../mosquitto.conf', import.meta.url));

/** The Mosquitto binary, or null when it is not installed. */
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
  /** Start from this configuration file instead of the repository's mosquitto.conf (e.g. examples/mosquitto-bridge/plant.conf). */
  confFile?: string;
  /** Use this ACL file as it is (a shipped one) instead of the one rendered from `access`; `access` still names the users that get passwords. */
  aclFile?: string;
  /** Further changes, line by line, for settings the launcher does not know (a bridge's address and password); return the line unchanged otherwise. */
  rewrite?: (line: string) => string;
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
 * Start Mosquitto with the repository's mosquitto.conf (or `confFile`, e.g. a shipped example),
 * changed only where a test must: the listener (a free loopback port), the persistence/log
 * locations, and the password and ACL files (a temp folder, made from the test access file by the
 * same code as `fedline acl`, or a copy of `aclFile`), plus what `rewrite` changes.
 */
export async function startMosquitto(bin: string, dir: string, options: MosquittoOptions = {}): Promise<RunningMosquitto> {
  const port = options.port ?? (await freeTcpPort());
  const auth = writeAuthFiles(dir, options.access ?? testAccess(), options.extraUsers);
  if (options.aclFile) copyFileSync(options.aclFile, auth.aclFile);
  let conf = mosquittoConf(options.confFile ?? MOSQUITTO_CONF, port, dir, auth, options.rewrite);
  let tlsPort: number | null = null;
  if (options.tls) {
    tlsPort = await freeTcpPort();
    const t = options.tls;
    conf += `\nlistener ${tlsPort} 127.0.0.1\ncertfile ${t.cert}\nkeyfile ${t.key}\ncafile ${t.ca}\nrequire_certificate ${t.requireCertificate}\nuse_identity_as_username ${t.identityAsUsername}\n`;
  }
  const file = join(dir, 'mosquitto.conf');
  writeFileSync(file, conf);
  const proc = spawn(bin, ['-c', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  await waitForListener(port, proc, () => stderr, 10_000);
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

/** A configuration file (the repository's mosquitto.conf by default) with this run's listener, folders, password and ACL files. */
function mosquittoConf(file: string, port: number, dir: string, auth: AuthFiles, rewrite: (line: string) => string = (l) => l): string {
  const conf = readFileSync(file, 'utf8')
    .split('\n')
    .map((line) => {
      if (/^\s*listener\s+\d+/.test(line)) return `listener ${port} 127.0.0.1`;
      if (/^\s*#?persistence_location\s/.test(line)) return `persistence_location ${dir}/`; // commented out in the repository file (Debian sets it)
      if (/^\s*log_dest\s/.test(line)) return 'log_dest stderr';
      if (/^\s*password_file\s/.test(line)) return `password_file ${auth.passwordFile}`;
      if (/^\s*acl_file\s/.test(line)) return `acl_file ${auth.aclFile}`;
      if (/^\s*(pid_file|user)\s/.test(line)) return `# (test) ${line}`;
      return rewrite(line);
    })
    .join('\n');
  // Started as root, Mosquitto drops to the `mosquitto` user, which cannot read our 0700 temp folder.
  return process.getuid?.() === 0 ? `user root\n${conf}` : conf;
}

/** Poll until the port accepts a TCP connection; fails at once when the process exits. */
async function waitForListener(port: number, proc: ChildProcess, stderr: () => string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.exitCode !== null) throw new FedlineError(ErrorCodes.TRANSPORT, `mosquitto exited with ${proc.exitCode}: ${stderr()}`);
    if (await accepts(port)) return;
    if (Date.now() > deadline)
      throw new FedlineError(ErrorCodes.TIMEOUT, `timed out after ${timeoutMs} ms waiting for mosquitto on port ${port} (stderr: ${stderr()})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const s = new Socket();
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
    s.connect(port, '127.0.0.1');
  });
}
