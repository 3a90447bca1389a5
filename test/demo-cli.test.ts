import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DemoSummary } from '../demo/run-demo.js';
import { DEMO_HEAD_STRATEGY, DEMO_STRATEGY, parseDemoArgs } from '../cli/demo-cmd.js';
import { REPO_ROOT, tempDir, waitFor } from './helpers.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');

/** True while the process exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = existsSync(`/proc/${pid}/stat`) ? readFileSync(`/proc/${pid}/stat`, 'utf8') : '';
  return !/^\d+ \(.*\) Z/.test(stat);
}

function runDemo(args: string[]) {
  const child = spawn(process.execPath, [CLI, 'demo', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
  const pids = () => [...out.matchAll(/\[pid (\d+)\]/g)].map((m) => Number(m[1]));
  return { child, exit, output: () => out, pids };
}

test(
  'npm run demo: 3 agent processes, every round with all 3, SCAFFOLD by default, final global accuracy >= 0.9 on every local test split, no process left',
  { timeout: 600_000 },
  async () => {
    const dir = tempDir('demo');
    try {
      const demo = runDemo(['--out', dir.path]);
      const code = await demo.exit;
      assert.equal(code, 0, demo.output());
      const summary = JSON.parse(readFileSync(join(dir.path, 'summary.json'), 'utf8')) as DemoSummary;
      assert.deepEqual(summary.agents, ['client1', 'client2', 'client3']);
      assert.ok(summary.rounds.length >= 1);
      for (const r of summary.rounds) {
        assert.deepEqual(r.participants, ['client1', 'client2', 'client3'], `round ${r.round} participants`);
        assert.ok(Object.values(r.sampleCounts).every((n) => n > 0));
        assert.ok(r.bytesUp > 0 && r.bytesDown > 0 && (r.durationMs ?? 0) > 0);
      }
      // The default strategy is SCAFFOLD (docs/experiment.md, "The demo's default recipe"): from round 2 on
      // the server's control variate travels down with every model, about doubling the bytes down.
      assert.equal(summary.options.strategy, 'scaffold');
      assert.match(demo.output(), /aggregator started, strategy scaffold,/);
      const [first, second] = summary.rounds;
      assert.ok(second && second.bytesDown > 1.9 * first!.bytesDown, `bytes down ${first!.bytesDown} then ${second?.bytesDown}`);
      const final = summary.finalModel;
      for (const agent of summary.agents) assert.ok(final.accuracy[agent]! >= 0.9, `final accuracy on ${agent}: ${final.accuracy[agent]}\n${demo.output()}`);
      assert.ok(existsSync(join(final.dir, 'model.json')) && existsSync(join(final.dir, 'weights.bin')));
      assert.match(demo.output(), /global model accuracy on each agent's local test split, per round/);
      // The closing lines name the final candidate and the released version (the one the lines run), with its folder.
      const released = summary.releasedModel;
      assert.ok(released && summary.releasedVersion === released.version && released.version <= final.version, JSON.stringify(summary.releasedVersion));
      assert.ok(existsSync(join(released.dir, 'model.json')), released.dir);
      assert.match(demo.output(), new RegExp(`final candidate v${final.version} `));
      assert.match(demo.output(), new RegExp(`released version v${released.version}\\b`));
      const pids = demo.pids();
      assert.equal(pids.length, 5, 'broker, aggregator and 3 agents were separate processes');
      await waitFor('every child process to end', () => pids.every((p) => !alive(p)), 10_000);
    } finally {
      dir.cleanup();
    }
  },
);

test('Ctrl-C on the demo ends it and every process it started', { timeout: 120_000 }, async () => {
  const dir = tempDir('demo-sigint');
  try {
    const demo = runDemo(['--out', dir.path, '--rounds', '3', '--scale', '0.5']);
    await waitFor('the first round to start', () => /round 1 started/.test(demo.output()), 60_000);
    const pids = demo.pids();
    assert.equal(pids.length, 5);
    assert.ok(pids.every(alive));
    demo.child.kill('SIGINT');
    const code = await demo.exit;
    assert.equal(code, 130, demo.output());
    await waitFor('every child process to end', () => pids.every((p) => !alive(p)), 10_000);
  } finally {
    dir.cleanup();
  }
});

test('bad demo arguments are refused with a clear message and exit code 2', async () => {
  const demo = runDemo(['--rounds', 'many']);
  assert.equal(await demo.exit, 2);
  assert.match(demo.output(), /--rounds must be an integer/);
});

test('demo strategy: SCAFFOLD by default, FedAvg for head-only, --strategy wins over both, an unknown one is refused', () => {
  assert.equal(DEMO_STRATEGY, 'scaffold');
  assert.equal(DEMO_HEAD_STRATEGY, 'fedavg');
  assert.equal(parseDemoArgs([]).strategy, 'scaffold');
  assert.equal(parseDemoArgs(['--model', 'vgg11', '--federate', 'head']).strategy, 'fedavg');
  assert.equal(parseDemoArgs(['--federate', 'head', '--strategy', 'scaffold']).strategy, 'scaffold');
  assert.equal(parseDemoArgs(['--strategy', 'fedprox']).strategy, 'fedprox');
  assert.throws(() => parseDemoArgs(['--strategy', 'nope']), /--strategy must be one of .*got "nope"/);
});
