import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/** The Redis behind a two-node broker cluster of bench/scale.ts (Debian's redis-server, as .ci/run installs it). */

export const REDIS_SERVER = '/usr/bin/redis-server';

export function redisAvailable(): boolean {
  return existsSync(REDIS_SERVER);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
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

export interface RunningRedis {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** A throw-away redis-server on a free loopback port, nothing saved to disk; its log in `logFile`. */
export async function startRedis(logFile: string, extraArgs: string[] = []): Promise<RunningRedis> {
  if (!redisAvailable())
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `${REDIS_SERVER} is not installed (Debian package redis-server): two broker nodes need it`);
  const port = await freePort();
  // No output-buffer limit for pub/sub clients, as docs/how-it-works.md asks of a cluster's Redis: with
  // Redis' default (32 MB) the node holding the aggregator's session was dropped at 300 sites and lost
  // messages (docs/scaling.md). `extraArgs` (BENCH_REDIS_ARGS) come after, so they can put a limit back.
  const unlimited = ['--client-output-buffer-limit', 'pubsub', '0', '0', '0'];
  const proc = spawn(
    REDIS_SERVER,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--logfile', logFile, ...unlimited, ...extraArgs],
    {
      stdio: 'ignore',
    },
  );
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
  };
  const until = Date.now() + 20_000;
  while (!(await pingOk(port))) {
    if (Date.now() > until || proc.exitCode !== null) {
      await stop();
      throw new FedlineError(ErrorCodes.TRANSPORT, `redis-server on port ${port} did not answer PING within 20 s`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url: `redis://127.0.0.1:${port}`, pid: proc.pid!, stop };
}
