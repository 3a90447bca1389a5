import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RoundJournal, type Journal } from '../aggregator/round-journal.js';
import { silentLogger } from '../shared/util/logger.js';
import { tempDir } from './helpers.js';
import type { TestContext } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';

/**
 * The aggregator's journal (aggregator/round-journal.ts) under a burst of saves, as when hundreds
 * of agents' eval reports arrive within seconds: every save lands with its change, in order,
 * and the writes coalesce instead of queueing one snapshot of the whole journal per call.
 */

function stateDir(t: TestContext): string {
  const d = tempDir('journal');
  t.after(() => d.cleanup());
  return d.path;
}

function readJournal(dir: string): Journal {
  return JSON.parse(readFileSync(join(dir, 'journal.json'), 'utf8')) as Journal;
}

test('300 saves in one burst: one write, and each save resolves with its change on disk', async (t) => {
  // Arrange
  const dir = stateDir(t);
  const journal = new RoundJournal('fed-a', dir, silentLogger());
  // Act: change, save, change, save ... as the eval handler does, without waiting in between.
  const saves = Array.from({ length: 300 }, (_, i) => {
    journal.data.trainRoundsDone = i + 1;
    return journal.save();
  });
  await Promise.all(saves);
  // Assert
  assert.equal(readJournal(dir).trainRoundsDone, 300, 'the last change is on disk');
  assert.equal(journal.writes, 1, 'saves before the write started join it');
});

test('300 saves spread over event-loop turns: each lands with its change, writes coalesce', async (t) => {
  // Arrange
  const dir = stateDir(t);
  const journal = new RoundJournal('fed-a', dir, silentLogger());
  const seen: number[] = [];
  const saves: Promise<unknown>[] = [];
  // Act: one change and save per turn, as eval reports read one by one from the socket
  for (let i = 0; i < 300; i++) {
    journal.data.trainRoundsDone = i + 1;
    saves.push(journal.save().then(() => (seen[i] = readJournal(dir).trainRoundsDone)));
    await nextTurn();
  }
  await Promise.all(saves);
  // Assert
  assert.equal(readJournal(dir).trainRoundsDone, 300, 'the last change is on disk');
  for (let i = 0; i < 300; i++) assert.ok(seen[i]! >= i + 1, `save ${i + 1} resolved before its change was written (file had ${seen[i]})`);
  // An atomic write is several file-system calls (open, write, fsync, rename, fsync of the folder),
  // each at least a turn: the saves of those turns share the next write instead of one each.
  assert.ok(journal.writes < 150, `300 saves took ${journal.writes} writes`);
});

test('a save during a write is written after it, with the newer state', async (t) => {
  // Arrange
  const dir = stateDir(t);
  const journal = new RoundJournal('fed-a', dir, silentLogger());
  journal.data.currentVersion = 1;
  const first = journal.save();
  // Act: change after the first write has started (it serialised version 1)
  await Promise.resolve();
  await Promise.resolve();
  journal.data.currentVersion = 2;
  const second = journal.save();
  await Promise.all([first, second]);
  // Assert
  assert.equal(readJournal(dir).currentVersion, 2);
  assert.equal(journal.writes, 2);
  await journal.save();
  assert.equal(journal.writes, 3, 'a save after the writes settled writes again');
});

test('a failed write rejects the saves that joined it; later saves write again', async (t) => {
  // Arrange: the state folder is a file, so the write cannot create journal.json in it
  const parent = stateDir(t);
  const blocked = join(parent, 'not-a-folder');
  writeFileSync(blocked, 'x');
  const journal = new RoundJournal('fed-a', blocked, silentLogger());
  // Act / Assert
  const a = journal.save();
  const b = journal.save();
  await assert.rejects(a);
  await assert.rejects(b);
  await assert.rejects(journal.save(), 'a later save tries again (and fails again here)');
  await journal.flushed();
});
