import { randomBytes } from 'node:crypto';
import { appendFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { z } from 'zod';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { roundRecordSchema } from '../shared/protocol/mes.js';
import { stateJson, writeFileAtomic } from '../shared/util/fs-atomic.js';
import type { Logger } from '../shared/util/logger.js';

/**
 * One round as it happened; the journal holds these and the MES gets them as round-completed.
 * Derived from the event schema so that what is journalled is exactly what is published.
 */
export type RoundRecord = z.infer<typeof roundRecordSchema>;

export interface Journal {
  federation: string;
  /**
   * This federation run's identity (protocol `runId`): made when the aggregator starts with fresh
   * state, kept here so that a restarted aggregator continues the same run.
   */
  runId: string;
  currentVersion: number;
  complete: boolean;
  finalVersion: number | null;
  /** Training rounds closed so far (all time, including those moved to history.jsonl). */
  trainRoundsDone: number;
  /** The most recent rounds (older ones are appended to history.jsonl, see JOURNAL_KEEP_ROUNDS and JOURNAL_KEEP_SITE_ENTRIES). */
  rounds: RoundRecord[];
}

/**
 * Rounds kept in journal.json (and in memory). A federation that runs for months must not grow
 * its journal or its heap with every round: older records move to the append-only history.jsonl.
 */
export const JOURNAL_KEEP_ROUNDS = 200;

/**
 * Site entries kept in journal.json: the sum over its rounds of the agents each selected. A round's
 * record holds every selected site's metrics, sample count and timings (about 600 bytes a site,
 * compact), so a round bound alone lets the journal grow with the sites: 200 rounds of 300 sites
 * were 36 MB, rewritten at every save and held in the heap. With this bound it stays under about
 * 4 MB (20 rounds of 300 sites, 6 of 1,000; 200 rounds up to 30 sites). The latest round always stays.
 */
export const JOURNAL_KEEP_SITE_ENTRIES = 6000;

/**
 * The aggregator's journal (<stateDir>/journal.json): what a restarted aggregator needs to go on
 * (current version, rounds done, the open round). Callers change `data` in place, then save().
 */
export class RoundJournal {
  data: Journal;
  private readonly stateDir: string;
  private readonly log: Logger;
  private chain: Promise<void> = Promise.resolve();
  /** The write that saves not yet written join (null when none is waiting). */
  private next: Promise<void> | null = null;
  private writesStarted = 0;

  constructor(federation: string, stateDir: string, log: Logger) {
    this.stateDir = stateDir;
    this.log = log;
    this.data = { federation, runId: newRunId(), currentVersion: 0, complete: false, finalVersion: null, trainRoundsDone: 0, rounds: [] };
  }

  get path(): string {
    return join(this.stateDir, 'journal.json');
  }

  /** Read the journal a previous run left, if any. */
  async load(): Promise<void> {
    try {
      const j = JSON.parse(await readFile(this.path, 'utf8')) as Journal;
      // Rewrapped below as FL_MODEL_STORE, "cannot read the journal <path>: ...".
      if (j.federation !== this.data.federation) throw new FedlineError(ErrorCodes.MODEL_STORE, `journal belongs to federation ${j.federation}`);
      // Journals written before trainRoundsDone existed: count what they hold.
      j.trainRoundsDone ??= j.rounds.filter((r) => r.kind === 'train' && r.outcome !== null).length;
      // Journals written before run identities existed: this run gets one now (saved with the next round).
      j.runId ??= this.data.runId;
      this.data = j;
      this.log.info({ rounds: j.rounds.length, complete: j.complete }, 'journal loaded');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        throw new FedlineError(ErrorCodes.MODEL_STORE, `cannot read the journal ${this.path}: ${(err as Error).message}`);
    }
  }

  /**
   * Move the oldest rounds to history.jsonl until at most `keepRounds` rounds and `keepSiteEntries`
   * site entries (JOURNAL_KEEP_SITE_ENTRIES) are left; the latest round is never moved.
   */
  async spillOldRounds(keepRounds = JOURNAL_KEEP_ROUNDS, keepSiteEntries = JOURNAL_KEEP_SITE_ENTRIES): Promise<void> {
    const { rounds } = this.data;
    let excess = Math.max(0, rounds.length - keepRounds);
    let entries = rounds.slice(excess).reduce((n, r) => n + r.selected.length, 0);
    while (excess < rounds.length - 1 && entries > keepSiteEntries) entries -= rounds[excess++]!.selected.length;
    if (excess <= 0) return;
    const old = this.data.rounds.slice(0, excess);
    await appendFile(join(this.stateDir, 'history.jsonl'), old.map((r) => JSON.stringify(r)).join('\n') + '\n');
    this.data.rounds = this.data.rounds.slice(excess);
  }

  /**
   * Write the journal as it is now. Writes are serialised (an older state never lands after a
   * newer one) and coalesced: while one is in flight, every save() joins a single next write,
   * which serialises `data` only when it starts, so it holds every change made before those calls.
   * Memory: one serialised journal at a time, however many saves come at once. (A snapshot per
   * call, queued behind the fsyncs, held 300 copies of a 0.7 MB journal when 300 agents' eval
   * reports came within seconds: +170 MiB of heap in bench:scale, docs/scaling.md.)
   */
  save(): Promise<void> {
    if (this.next) return this.next;
    const next = this.chain.then(() => {
      // From here on a save() must write again: this one may serialise before its change.
      this.next = null;
      this.writesStarted++;
      return writeFileAtomic(this.path, stateJson(this.data));
    });
    this.next = next;
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Journal writes started so far (saves coalesce, so there are fewer than save() calls). */
  get writes(): number {
    return this.writesStarted;
  }

  /** Settles when every save so far has (the last write lands before the state folder goes). */
  flushed(): Promise<void> {
    return this.chain;
  }
}

/** A fresh run identity: 16 random lowercase hex digits. */
function newRunId(): string {
  return randomBytes(8).toString('hex');
}
