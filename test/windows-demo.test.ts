import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DemoSummary } from '../demo/run-demo.js';
import { REPO_ROOT, tempDir } from './helpers.js';

// Named to sort after the other tests, so that it rarely runs beside the default demo test
// (test/demo-cli.test.ts): two demos at once on 2 cores take twice as long each.
const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');

test(
  'npm run demo -- --trigger opcua: agents evaluate and train only while their line is idle, pause when it runs, and finish the rounds',
  { timeout: 300_000 },
  async () => {
    const dir = tempDir('demo-opcua');
    try {
      const child = spawn(
        process.execPath,
        [CLI, 'demo', '--out', dir.path, '--trigger', 'opcua', '--rounds', '2', '--scale', '0.5', '--plc-schedule', 'Running:3,Idle:4'],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
      assert.equal(code, 0, out);
      const summary = JSON.parse(readFileSync(join(dir.path, 'summary.json'), 'utf8')) as DemoSummary;
      assert.equal(summary.rounds.length, 2);
      assert.ok(summary.rounds.every((r) => r.outcome === 'aggregate' && r.participants.length === 3));
      assert.ok(
        summary.rounds.every((r) => r.windows && Object.keys(r.windows).length === 3),
        'window times per round and agent in summary.json',
      );

      // Replay the printed timeline: PLC line states and agent states, in order.
      const lineState = new Map<string, string>();
      const lineChangedAt = new Map<string, number>();
      const events = [...out.matchAll(/^\[\s*([\d.]+)s\]\s+(?:PLC Line(\d) \((client\d)\): (\w+)|(client\d)\s+([\w-]+):(.*))$/gm)];
      let computeStarts = 0;
      let pauses = 0;
      let waits = 0;
      for (const [i, m] of events.entries()) {
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
        // The line switched to Running a moment ago and the agent has not seen it yet (OPC UA
        // sampling and publishing latency, more on a loaded machine), or it saw it during the
        // evaluation: then it holds before the first batch.
        const since = t - (lineChangedAt.get(agent) ?? -1e9);
        const next = events.slice(i + 1).find((x) => x[5] === agent);
        const heldAtOnce = state === 'training' && next?.[6] === 'paused' && /before epoch 1\/\d+, batch 1\//.test(next[7]!);
        assert.ok(
          since <= 1.5 || heldAtOnce,
          `${agent} started ${state} at ${t}s while its line had been ${lineState.get(agent)} for ${since.toFixed(1)} s\n${out}`,
        );
      }
      assert.ok(computeStarts >= 6, 'evaluations and trainings seen');
      assert.ok(waits + pauses >= 1, `agents waited for (${waits}) or paused in (${pauses}) windows`);
      assert.match(out, /training windows in round 1: client1 waited/);
    } finally {
      dir.cleanup();
    }
  },
);
