import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, tempDir } from './helpers.js';

const SCALE = join(REPO_ROOT, 'dist', 'bench', 'scale.js');
/** The two-node configuration needs Debian's redis-server (.ci/run installs it); without it only one node runs. */
const redis = existsSync('/usr/bin/redis-server');

/** The parts of a bench:scale result (bench/scale-result.ts, ScaleResult) this test reads; test/ does not import bench/. */
interface Measure {
  peakMiB: number;
}
interface ScaleResult {
  nodes: number;
  modelBytes: number;
  updateBytes: number;
  resentChunks: number;
  aggregator: Measure;
  brokers: Measure[];
  redis: Measure | null;
  agentHosts: Measure;
  agentsDownloadedBytes: number;
  aggregatorRssByPhaseMiB: number[];
  roundsMeasured: {
    seconds: number;
    selected: number;
    lost: number;
    verified: number;
    bytesUp: number;
    bytesDown: number;
    phases: Record<'baseFetched' | 'lastChunk' | 'allAccepted' | 'modelStored' | 'modelPublished' | 'newVerified', number>;
  }[];
}

/** Run bench:scale as its own process; resolves with its standard output once it exited 0. */
async function runScale(args: string[]): Promise<string> {
  const child = spawn(process.execPath, [SCALE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 140_000);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  assert.equal(code, 0, `bench:scale exited with ${code}\n${out}\n${err}`);
  return out;
}

/** `npm run bench:scale` at a tiny size, as its own process, so the benchmark keeps working between the long runs. */
test(
  'bench:scale at a tiny size, sites in their own folder: every update aggregated, every agent verifies the new model, the table printed',
  { timeout: 150_000 },
  async () => {
    const dir = tempDir('bench-scale');
    try {
      const json = join(dir.path, 'scale.json');
      const sites = join(dir.path, 'sites');
      mkdirSync(sites);
      const nodes = redis ? '1,2' : '1';
      const out = await runScale([
        '--agents',
        '4',
        '--sizes',
        '0.1',
        '--nodes',
        nodes,
        '--rounds',
        '1',
        '--agents-per-process',
        '2',
        '--sites-dir',
        sites,
        '--json',
        json,
      ]);
      assert.match(out, new RegExp(`simulated sites' state \\(model caches\\) in ${sites}/fedline-bench-scale-sites-`));
      assert.deepEqual(readdirSync(sites), [], "the sites' folder is removed at the end");
      assert.match(out, /^\s+4\s+0\.1\s+1\s+\d+\.\d/m, 'a table row for 4 agents, 0.1 MB, one node');
      if (redis) assert.match(out, /^\s+4\s+0\.1\s+2\s+\d+\.\d/m, 'a table row for two nodes');
      assert.match(out, /lost updates \(selected, not aggregated\), all configurations: 0 \(goal 0: met\)/);
      const { results, sitesDir } = JSON.parse(readFileSync(json, 'utf8')) as { results: ScaleResult[]; sitesDir: string };
      assert.equal(sitesDir, sites);
      assert.equal(results.length, redis ? 2 : 1);
      for (const r of results) {
        const round = r.roundsMeasured[0]!;
        // Each site drops its cached model once it holds it (--sites-dir): one that dropped it too early would download it again.
        assert.equal(r.agentsDownloadedBytes, 8 * r.modelBytes, 'the base and the new model, once per agent, as the agents counted');
        assert.equal(round.selected, 4);
        assert.equal(round.lost, 0, 'every selected update aggregated');
        assert.equal(round.verified, 4, 'every agent verified the new model');
        assert.equal(r.resentChunks, 0, 'nothing resent on loopback');
        // Each agent sent one update of ~0.1 MB and fetched the base and the new model.
        assert.ok(r.updateBytes > 100_000 && r.updateBytes < 110_000, `update of ${r.updateBytes} bytes`);
        assert.equal(round.bytesUp, 4 * r.updateBytes);
        assert.equal(round.bytesDown, 8 * r.modelBytes);
        const p = round.phases;
        const order = [p.baseFetched, p.lastChunk, p.allAccepted, p.modelStored, p.modelPublished, p.newVerified];
        assert.ok(
          order.every((t, i) => Number.isFinite(t) && t >= 0 && (i === 0 || t >= order[i - 1]!)),
          `phases in order: ${order.join(', ')}`,
        );
        assert.equal(round.seconds, p.newVerified);
        assert.ok(r.aggregator.peakMiB > 0 && r.brokers.every((b) => b.peakMiB > 0) && r.agentHosts.peakMiB > 0, 'peak RSS sampled');
        // Before the round, then the round's four phases; a phase shorter than the sampling has none (0), the time before the round always has one.
        const byPhase = r.aggregatorRssByPhaseMiB;
        assert.equal(byPhase.length, 5);
        assert.ok(byPhase[0]! > 0 && byPhase.every((m) => m >= 0 && m <= r.aggregator.peakMiB + 1), `aggregator RSS by phase ${byPhase.join(', ')}`);
        assert.match(out, /aggregator max RSS MiB \(before the round \/ base fetch \/ uploads \/ FedAvg and publish \/ new model fetch\): \d+( \/ (\d+|-)){4}/);
        assert.equal(r.brokers.length, r.nodes);
        assert.equal(r.redis !== null, r.nodes === 2);
      }
    } finally {
      dir.cleanup();
    }
  },
);

test('bench:scale --repeat 2: every configuration runs twice, the memory goal takes the medians and prints each pass', { timeout: 150_000 }, async () => {
  const dir = tempDir('bench-scale-repeat');
  try {
    const json = join(dir.path, 'scale.json');
    const out = await runScale(['--agents', '2,3', '--sizes', '0.1', '--nodes', '1', '--agents-per-process', '3', '--repeat', '2', '--json', json]);
    const { results } = JSON.parse(readFileSync(json, 'utf8')) as { results: (ScaleResult & { agents: number })[] };
    assert.deepEqual(
      results.map((r) => r.agents),
      [2, 3, 2, 3],
      'pass after pass',
    );
    const peak = (agents: number) => results.filter((r) => r.agents === agents).map((r) => r.aggregator.peakMiB);
    const mid = (xs: number[]) => (xs[0]! + xs[1]!) / 2;
    const growth = (mid(peak(3)) / mid(peak(2)) - 1) * 100;
    const pct = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(1)} %`;
    const line =
      /0\.1 MB, 1 node, 2 -> 3 agents \(medians of 2 passes\):\n\s+aggregator peak RSS ([\d.]+) -> ([\d.]+) MiB: (\S+ %) \(goal < 10 %: (met|MISSED)\); per pass: (\S+ %), (\S+ %)/.exec(
        out,
      );
    assert.ok(line, `summary line in:\n${out}`);
    assert.equal(Number(line[1]), Number(mid(peak(2)).toFixed(1)));
    assert.equal(Number(line[2]), Number(mid(peak(3)).toFixed(1)));
    assert.equal(line[3], pct(growth));
    assert.deepEqual(
      [line[5], line[6]],
      [0, 1].map((i) => pct((peak(3)[i]! / peak(2)[i]! - 1) * 100)),
    );
  } finally {
    dir.cleanup();
  }
});
