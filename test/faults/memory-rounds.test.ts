import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { loadTf } from '../../training/backend.js';
import { silentLogger } from '../../shared/util/logger.js';
import { startAedes, startFederation, tempDir } from '../helpers.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Fault 7: weeks of rounds must not grow memory. 50 rounds of a small model, all parts in this process. */
test('memory stays flat over 50 rounds (aggregator and agents): heap, RSS and tfjs tensor count', { timeout: 300_000 }, async () => {
  const dir = tempDir('fault-memory');
  const broker = await startAedes();
  const fed = await startFederation({
    url: broker.url,
    dir: dir.path,
    agents: ['site-a', 'site-b'],
    rounds: 50,
    logger: silentLogger(),
    aggregator: { evaluateFinalModel: false } as never,
  });
  const { tf } = await loadTf('cpu');
  const samples: { round: number; heapMb: number; rssMb: number; tensors: number }[] = [];
  fed.aggregator.aggregator.on('event', (e: { type: string; round?: number }) => {
    if (e.type !== 'round-completed' || (e.round! % 10 !== 0 && e.round !== 5)) return;
    gc();
    const m = process.memoryUsage();
    samples.push({ round: e.round!, heapMb: m.heapUsed / 2 ** 20, rssMb: m.rss / 2 ** 20, tensors: tf.memory().numTensors });
  });
  try {
    const result = await fed.aggregator.aggregator.run();
    const notAggregated = result.rounds.filter((r) => r.outcome !== 'aggregate');
    assert.deepEqual(
      notAggregated.map((r) => `round ${r.round}: ${r.outcome} (${r.reason}; failures ${JSON.stringify(r.failures)})`),
      [],
    );
    assert.equal(result.rounds.length, 50);
    const at = (r: number) => samples.find((s) => s.round === r)!;
    const warm = at(10);
    const end = at(50);
    // Printed for the record (docs/reliability.md quotes a run of this).
    console.log(
      `memory over rounds: ${samples.map((s) => `r${s.round} heap ${s.heapMb.toFixed(1)} MB rss ${s.rssMb.toFixed(1)} MB tensors ${s.tensors}`).join('; ')}`,
    );
    assert.equal(end.tensors, warm.tensors, 'no tfjs tensor leaks from round to round');
    assert.ok(end.heapMb - warm.heapMb < 15, `JS heap grew ${(end.heapMb - warm.heapMb).toFixed(1)} MB from round 10 to 50 (bound 15 MB)`);
    assert.ok(end.rssMb - warm.rssMb < 60, `RSS grew ${(end.rssMb - warm.rssMb).toFixed(1)} MB from round 10 to 50 (bound 60 MB)`);
  } finally {
    await fed.stop();
    await broker.close();
    dir.cleanup();
  }
});
