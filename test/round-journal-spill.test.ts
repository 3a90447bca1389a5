import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { JOURNAL_KEEP_ROUNDS, JOURNAL_KEEP_SITE_ENTRIES, RoundJournal, type Journal, type RoundRecord } from '../aggregator/round-journal.js';
import { silentLogger } from '../shared/util/logger.js';
import { tempDir } from './helpers.js';

/**
 * journal.json stays bounded in rounds and in sites (aggregator/round-journal.ts): older rounds
 * move to the append-only history.jsonl, in order, none lost, none twice; the latest round stays.
 * The journal is written as one line of compact JSON.
 */

function round(n: number, sites: number): RoundRecord {
  const selected = Array.from({ length: sites }, (_, i) => `site-${i}`);
  return {
    round: n,
    kind: 'train',
    baseVersion: n - 1,
    selected,
    deadlineAt: 0,
    startedAt: 0,
    closedAt: 1,
    outcome: 'aggregate',
    reason: 'all answered',
    newVersion: n,
    participants: selected,
    sampleCounts: Object.fromEntries(selected.map((a) => [a, 10])),
    baseMetrics: {},
    localMetrics: {},
    failures: [],
    trainMs: {},
    bytesUp: 0,
    bytesDown: 0,
    aggregateMs: 1,
    durationMs: 1,
  };
}

function history(dir: string): number[] {
  return readFileSync(join(dir, 'history.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => (JSON.parse(l) as RoundRecord).round);
}

test('the site bound spills the oldest rounds of a large federation; the round bound a small one', async (t) => {
  const d = tempDir('journal-spill');
  t.after(() => d.cleanup());
  const journal = new RoundJournal('fed-a', d.path, silentLogger());
  // Act: 30 rounds of 300 sites (9,000 site entries), spilling after each as the round runner does
  for (let r = 1; r <= 30; r++) {
    journal.data.rounds.push(round(r, 300));
    await journal.spillOldRounds();
  }
  await journal.save();
  // Assert: at most JOURNAL_KEEP_SITE_ENTRIES site entries stay, the newest rounds, and the rest is in history.jsonl in order
  const kept = Math.floor(JOURNAL_KEEP_SITE_ENTRIES / 300);
  assert.deepEqual(
    journal.data.rounds.map((r) => r.round),
    Array.from({ length: kept }, (_, i) => 31 - kept + i),
  );
  assert.deepEqual(
    history(d.path),
    Array.from({ length: 30 - kept }, (_, i) => i + 1),
  );
  const onDisk = readFileSync(join(d.path, 'journal.json'), 'utf8');
  assert.equal(onDisk.trimEnd().split('\n').length, 1, 'journal.json is one line of compact JSON');
  assert.deepEqual(
    (JSON.parse(onDisk) as Journal).rounds.map((r) => r.round),
    journal.data.rounds.map((r) => r.round),
  );

  // A federation of 10 sites keeps JOURNAL_KEEP_ROUNDS rounds (the site bound is not reached)
  const small = tempDir('journal-spill-small');
  t.after(() => small.cleanup());
  const j2 = new RoundJournal('fed-b', small.path, silentLogger());
  for (let r = 1; r <= JOURNAL_KEEP_ROUNDS + 5; r++) {
    j2.data.rounds.push(round(r, 10));
    await j2.spillOldRounds();
  }
  assert.equal(j2.data.rounds.length, JOURNAL_KEEP_ROUNDS);
  assert.deepEqual(history(small.path), [1, 2, 3, 4, 5]);
});

test('the latest round stays even when it alone is over the site bound', async (t) => {
  const d = tempDir('journal-spill-one');
  t.after(() => d.cleanup());
  const journal = new RoundJournal('fed-a', d.path, silentLogger());
  journal.data.rounds.push(round(1, 5), round(2, 50));
  await journal.spillOldRounds(200, 20);
  assert.deepEqual(
    journal.data.rounds.map((r) => r.round),
    [2],
  );
  assert.deepEqual(history(d.path), [1]);
});
