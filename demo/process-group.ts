import { fork, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { AGGREGATOR_NODE_FLAGS } from '../aggregator/node-flags.js';

export const CLI_PATH = fileURLToPath(new URL('../cli/main.js', import.meta.url));

export interface Child {
  name: string;
  proc: ChildProcess;
  exited: Promise<number | null>;
  logFile: string;
}

/**
 * fedline services started as separate OS processes (`node dist/cli/main.js <command>`), each with
 * its log in a file and an IPC channel used only to learn when it is ready. The group ends every
 * child it started: SIGTERM first, SIGKILL after a grace period. A child whose IPC channel closes
 * (we died) shuts itself down, so none outlives the group even on a crash.
 */
export class ProcessGroup {
  private readonly children: Child[] = [];

  async start(name: string, args: string[], logFile: string, readyTimeoutMs = 60_000): Promise<{ child: Child; ready: Record<string, unknown> }> {
    const fd = openSync(logFile, 'a');
    const proc = fork(CLI_PATH, args, {
      stdio: ['ignore', fd, fd, 'ipc'],
      // The aggregator runs with its production Node flags (aggregator/node-flags.ts), as under systemd.
      execArgv: [...process.execArgv, ...(args[0] === 'aggregator' ? AGGREGATOR_NODE_FLAGS : [])],
      env: { ...process.env, FEDLINE_LOG_LEVEL: process.env.FEDLINE_LOG_LEVEL ?? 'info' },
    });
    closeSync(fd);
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : null))));
    const child: Child = { name, proc, exited, logFile };
    this.children.push(child);
    const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name} did not become ready within ${readyTimeoutMs} ms (log: ${logFile})`)), readyTimeoutMs);
      proc.on('message', (msg: { type?: string }) => {
        if (msg && msg.type === 'ready') {
          clearTimeout(timer);
          resolve(msg as Record<string, unknown>);
        }
      });
      exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`${name} exited with code ${code} before it was ready (log: ${logFile})`));
      });
    });
    return { child, ready };
  }

  /** Stop children in reverse start order (agents before the broker they talk to). */
  async stopAll(graceMs = 8000): Promise<void> {
    for (const child of [...this.children].reverse()) {
      if (child.proc.exitCode !== null || child.proc.signalCode !== null) continue;
      child.proc.kill('SIGTERM');
      const timer = setTimeout(() => child.proc.kill('SIGKILL'), graceMs);
      await child.exited;
      clearTimeout(timer);
    }
  }

  /** Last resort on our own exit: kill synchronously whatever is still running. */
  killAllNow(): void {
    for (const child of this.children) if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL');
  }
}
