import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ProcessGroup } from '../demo/process-group.js';
import { tempDir } from './helpers.js';

test(
  '`fedline plc-sim` as a process: lines alternate Running/Idle on the schedule, logs stay JSON lines, it stops on SIGTERM',
  { timeout: 60_000 },
  async () => {
    const dir = tempDir('plc-sim');
    const group = new ProcessGroup();
    try {
      mkdirSync(join(dir.path, 'logs'));
      const log = join(dir.path, 'logs', 'plc.log');
      const { child, ready } = await group.start(
        'plc-sim',
        ['plc-sim', '--port', '0', '--lines', '2', '--schedule', 'Running:0.4,Idle:0.4', '--offset', '0.2', '--pki', join(dir.path, 'pki')],
        log,
      );
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
  },
);
