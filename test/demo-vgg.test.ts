import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DemoSummary } from '../demo/run-demo.js';
import { REPO_ROOT, tempDir } from './helpers.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');

function demo(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'demo', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) => resolve({ code, out }));
  });
}

test(
  'demo --model vgg11 with --federate all and --federate head (short runs): a pretrained base, every round aggregated, head updates far smaller',
  { timeout: 600_000 },
  async () => {
    const dir = tempDir('demo-vgg');
    try {
      const bytesUp: Record<string, number> = {};
      for (const federate of ['all', 'head']) {
        const out = join(dir.path, federate);
        const run = await demo(['--out', out, '--model', 'vgg11', '--federate', federate, '--rounds', '2', '--scale', '0.25', '--pretrain-epochs', '1']);
        assert.equal(run.code, 0, run.out);
        assert.match(run.out, new RegExp(`model vgg11 \\(width x0.25\\), federate ${federate}`));
        assert.match(run.out, /pretrained base: accuracy [\d.]+ on held-out reference images/);
        const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as DemoSummary;
        assert.equal(summary.options.model, 'vgg11');
        assert.equal(summary.options.federate, federate);
        assert.equal(summary.rounds.length, 2);
        for (const r of summary.rounds) assert.equal(r.outcome, 'aggregate');
        for (const agent of summary.agents) assert.ok(summary.finalModel.accuracy[agent]! >= 0, `final model evaluated on ${agent}`);
        bytesUp[federate] = summary.rounds[0]!.bytesUp;
      }
      // VGG-11 at width 0.25, 32x32: 1.84M weights in all, 34k in the head.
      assert.ok(bytesUp.head! * 10 < bytesUp.all!, `update bytes per round: head ${bytesUp.head}, all ${bytesUp.all}`);
    } finally {
      dir.cleanup();
    }
  },
);
