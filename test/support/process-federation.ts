import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentConfig, AggregatorConfig } from '../../shared/config/service-config.js';
import { REPO_ROOT } from '../helpers.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');

export interface ServiceProcess {
  name: string;
  proc: ChildProcess;
  exited: Promise<number | null>;
}

/**
 * fedline services as real OS processes (`node dist/cli/main.js <command> --config FILE`), with
 * logs under `<dir>/logs/`, that a test can kill -9 and start again with the same config and
 * state folder. Every process is ended by stopAll().
 */
export class ProcessFederation {
  private readonly dir: string;
  private readonly running = new Map<string, ServiceProcess>();

  constructor(dir: string) {
    this.dir = dir;
    mkdirSync(join(dir, 'logs'), { recursive: true });
    mkdirSync(join(dir, 'config'), { recursive: true });
  }

  writeConfig(name: string, config: AggregatorConfig | AgentConfig | Record<string, unknown>): string {
    const file = join(this.dir, 'config', `${name}.json`);
    writeFileSync(file, JSON.stringify(config, null, 2));
    return file;
  }

  /** Start `fedline <command> --config <file>` and wait until it says it is ready. */
  async start(
    name: string,
    command: 'broker' | 'aggregator' | 'agent',
    configFile: string,
    readyTimeoutMs = 60_000,
  ): Promise<ServiceProcess & { ready: Record<string, unknown> }> {
    const fd = openSync(join(this.dir, 'logs', `${name}.log`), 'a');
    const proc = fork(CLI, [command, '--config', configFile], { stdio: ['ignore', fd, fd, 'ipc'] });
    closeSync(fd);
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : null))));
    const service: ServiceProcess = { name, proc, exited };
    this.running.set(name, service);
    const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name} not ready within ${readyTimeoutMs} ms`)), readyTimeoutMs);
      proc.on('message', (m: { type?: string }) => {
        if (m?.type === 'ready') {
          clearTimeout(timer);
          resolve(m as Record<string, unknown>);
        }
      });
      exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`${name} exited with ${code} before it was ready; see ${join(this.dir, 'logs', `${name}.log`)}`));
      });
    });
    return { ...service, ready };
  }

  /** Power cut: SIGKILL, no chance to say goodbye (the broker publishes the last will). */
  async kill(name: string): Promise<void> {
    const s = this.running.get(name);
    if (!s) return;
    s.proc.kill('SIGKILL');
    await s.exited;
    this.running.delete(name);
  }

  get(name: string): ServiceProcess | undefined {
    return this.running.get(name);
  }

  async stopAll(): Promise<void> {
    for (const [name, s] of [...this.running.entries()].reverse()) {
      if (s.proc.exitCode === null && s.proc.signalCode === null) {
        s.proc.kill('SIGTERM');
        const t = setTimeout(() => s.proc.kill('SIGKILL'), 5000);
        await s.exited;
        clearTimeout(t);
      }
      this.running.delete(name);
    }
  }
}
