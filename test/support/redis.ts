import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { freePort, waitFor } from '../helpers.js';

export const REDIS_SERVER = '/usr/bin/redis-server';

/** Why the cluster tests cannot run here, or false. */
export function redisMissing(): string | false {
  return existsSync(REDIS_SERVER) ? false : `${REDIS_SERVER} is not installed (Debian package redis-server; .ci/run installs it)`;
}

function pingOk(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.setTimeout(1000, () => (s.destroy(), resolve(false)));
    s.once('error', () => resolve(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => (s.destroy(), resolve(d.toString().startsWith('+PONG'))));
  });
}

/** A throw-away redis-server on a free loopback port, nothing saved to disk; `extraArgs` are more redis-server options. */
export async function startRedis(extraArgs: readonly string[] = []): Promise<{ url: string; port: number; stop(): Promise<void> }> {
  const port = await freePort();
  const proc: ChildProcess = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...extraArgs], {
    stdio: 'ignore',
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
  };
  try {
    await waitFor('redis-server to answer PING', () => pingOk(port), 20_000, 100);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `redis://127.0.0.1:${port}`, port, stop };
}
