import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DemoSummary } from '../cli/demo.js';
import { ProcessGroup } from '../cli/process-group.js';
import { REPO_ROOT, tempDir } from './helpers.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');

test('`fedline plc-sim` as a process: lines alternate Running/Idle on the schedule, logs stay JSON lines, it stops on SIGTERM', { timeout: 60_000 }, async () => {
  const dir = tempDir('plc-sim');
  const group = new ProcessGroup();
  try {
    mkdirSync(join(dir.path, 'logs'));
    const log = join(dir.path, 'logs', 'plc.log');
    const { child, ready } = await group.start('plc-sim', ['plc-sim', '--port', '0', '--lines', '2', '--schedule', 'Running:0.4,Idle:0.4', '--offset', '0.2', '--pki', join(dir.path, 'pki')], log);
    assert.match(String(ready.endpoint), /^opc\.tcp:\/\/127\.0\.0\.1:\d+$/);
    const changes: { line: number; state: string; at: number }[] = [];
    child.proc.on('message', (m: { type?: string; line: number; state: string; at: number }) => m.type === 'line-state' && changes.push(m));
    await new Promise((r) => setTimeout(r, 2000));
    for (const line of [1, 2]) {
      const states = changes.filter((c) => c.line === line).map((c) => c.state);
      assert.ok(states.length >= 3, `line ${line} changed ${states.length} times`);
      for (let i = 1; i < states.length; i++) assert.notEqual(states[i], states[i - 1]);
    }
    await group.stopAll();
    assert.equal(await child.exited, 0);
    const lines = readFileSync(log, 'utf8').split('\n').filter(Boolean);
    for (const l of lines) assert.doesNotThrow(() => JSON.parse(l), `not a JSON log line: ${l}`);
  } finally {
    await group.stopAll();
    dir.cleanup();
  }
});

test('npm run demo -- --trigger opcua: agents evaluate and train only while their line is idle, pause when it runs, and finish the rounds', { timeout: 300_000 }, async () => {
  const dir = tempDir('demo-opcua');
  try {
    const child = spawn(process.execPath, [CLI, 'demo', '--out', dir.path, '--trigger', 'opcua', '--rounds', '2', '--scale', '0.6', '--plc-schedule', 'Running:3,Idle:4'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0, out);
    const summary = JSON.parse(readFileSync(join(dir.path, 'summary.json'), 'utf8')) as DemoSummary;
    assert.equal(summary.rounds.length, 2);
    assert.ok(summary.rounds.every((r) => r.outcome === 'aggregate' && r.participants.length === 3));
    assert.ok(summary.rounds.every((r) => r.windows && Object.keys(r.windows).length === 3), 'window times per round and agent in summary.json');

    // Replay the printed timeline: PLC line states and agent states, in order.
    const lineState = new Map<string, string>();
    const lineChangedAt = new Map<string, number>();
    const events = [...out.matchAll(/^\[\s*([\d.]+)s\]\s+(?:PLC Line(\d) \((client\d)\): (\w+)|(client\d)\s+([\w-]+):)/gm)];
    let computeStarts = 0;
    let pauses = 0;
    let waits = 0;
    for (const m of events) {
      const t = Number(m[1]);
      if (m[2]) {
        lineState.set(m[3]!, m[4]!);
        lineChangedAt.set(m[3]!, t);
        continue;
      }
      const agent = m[5]!;
      const state = m[6]!;
      if (state === 'waiting-window') waits++;
      if (state === 'paused') {
        pauses++;
        assert.equal(lineState.get(agent), 'Running', `${agent} paused at ${t}s while its line ran`);
      }
      if (state !== 'evaluating' && state !== 'training') continue;
      computeStarts++;
      if (lineState.get(agent) === 'Idle') continue;
      // Only when the line switched to Running a moment ago and the agent has not seen it yet
      // (OPC UA sampling and publishing latency): it then stops at the next batch boundary.
      const since = t - (lineChangedAt.get(agent) ?? -1e9);
      assert.ok(since <= 1.0, `${agent} started ${state} at ${t}s while its line had been ${lineState.get(agent)} for ${since.toFixed(1)} s\n${out}`);
    }
    assert.ok(computeStarts >= 6, 'evaluations and trainings seen');
    assert.ok(waits + pauses >= 2, `agents waited for (${waits}) or paused in (${pauses}) windows`);
    assert.match(out, /training windows in round 1: client1 waited/);
  } finally {
    dir.cleanup();
  }
});
