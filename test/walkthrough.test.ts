import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { cpSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, REPO_ROOT, tempDir, waitFor } from './helpers.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');

/** The `npx fedline ...` lines of the README's three-site walkthrough, comments and `&` removed. */
export function walkthroughCommands(readme: string): string[][] {
  const section = readme.slice(readme.indexOf('## Running the pieces separately'));
  const block = /```sh\n([\s\S]*?)```/.exec(section)![1]!;
  return block
    .split('\n')
    .map((l) =>
      l
        .replace(/\s#\s.*$/, '')
        .replace(/&\s*$/, '')
        .trim(),
    )
    .filter((l) => l.startsWith('npx fedline '))
    .map((l) => l.slice('npx fedline '.length).split(/\s+/));
}

interface Service {
  name: string;
  proc: ChildProcess;
  out: () => string;
  lines: () => Record<string, unknown>[];
  exit: Promise<number | null>;
}

function start(args: string[], cwd: string): Service {
  const proc = fork(CLI, args, { cwd, stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env: { ...process.env, FEDLINE_LOG_LEVEL: 'info' } });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const lines = () =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { name: args.join(' '), proc, out: () => out, lines, exit };
}

test("the README's three-site walkthrough runs to the end as written (2 rounds, free ports)", { timeout: 900_000 }, async () => {
  const commands = walkthroughCommands(readFileSync(join(REPO_ROOT, 'README.md'), 'utf8'));
  assert.deepEqual(
    commands.map((c) => c[0]),
    ['dataset', 'broker', 'aggregator', 'plc-sim', 'agent', 'agent', 'agent', 'inspect'],
  );
  const dir = tempDir('walkthrough');
  const services: Service[] = [];
  try {
    // The examples as shipped, with the only changes a shared test machine needs: free ports, 2 rounds.
    cpSync(join(REPO_ROOT, 'examples'), join(dir.path, 'examples'), { recursive: true, filter: (src) => !/examples\/(data|state|inspect)(\/|$)/.test(src) });
    const mqttPort = await freePort();
    const opcuaPort = await freePort();
    for (const f of readdirSync(join(dir.path, 'examples')).filter((x) => x.endsWith('.json'))) {
      const file = join(dir.path, 'examples', f);
      let text = readFileSync(file, 'utf8')
        .replaceAll('127.0.0.1:1883', `127.0.0.1:${mqttPort}`)
        .replace(/"port": 1883/, `"port": ${mqttPort}`)
        .replaceAll('127.0.0.1:4840', `127.0.0.1:${opcuaPort}`);
      if (f === 'aggregator.json') text = text.replace(/"rounds": \d+/, '"rounds": 2');
      writeFileSync(file, text);
    }
    for (const args of commands) {
      if (args[0] === 'plc-sim') args.push('--port', String(opcuaPort));
      const s = start(args, dir.path);
      services.push(s);
      if (args[0] === 'dataset') {
        assert.equal(await s.exit, 0, s.out());
        continue;
      }
      await new Promise<void>((resolve, reject) => {
        s.proc.once('message', () => resolve());
        s.exit.then((code) => reject(new Error(`${s.name} exited with ${code}: ${s.out()}`)), reject);
      });
    }
    const aggregator = services.find((s) => s.name.startsWith('aggregator'))!;
    const finished = () => aggregator.lines().find((l) => l.msg === 'federation finished');
    await waitFor('the federation to finish its 2 rounds', () => finished() !== undefined, 840_000, 500);
    assert.equal(finished()!.finalVersion, 2, aggregator.out().slice(-3000));
    for (const site of ['site-a', 'site-b', 'site-c']) {
      const agent = services.find((s) => s.name.includes(`agent-${site}.json`))!;
      assert.ok(
        agent.lines().some((l) => l.msg === 'update accepted by the aggregator'),
        `${site} trained in its window and its update was accepted: ${agent.out().slice(-2000)}`,
      );
    }
  } finally {
    for (const s of services.reverse()) {
      if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGTERM');
      await s.exit;
    }
    dir.cleanup();
  }
});
