import type { RoundAnnouncement } from '../shared/protocol/messages.js';

type RoundId = Pick<RoundAnnouncement, 'runId' | 'round'>;

/**
 * The rounds an agent is done with, keyed by (runId, round): a federation restarted with fresh
 * state counts rounds from 1 again, so a round number alone does not name a round. Also tells an
 * earlier run's stale retained announcement from the run being followed.
 */
export class RunRounds {
  private readonly finished = new Set<string>();
  /** The run of the newest announcement followed so far, and when it was issued. */
  private newest: { runId: string; issuedAt: number } | null = null;

  finish(ann: RoundId): void {
    this.finished.add(key(ann));
  }

  isFinished(ann: RoundId): boolean {
    return this.finished.has(key(ann));
  }

  /**
   * True for an announcement of another run issued before the newest one followed so far: it
   * belongs to an earlier run (a stale retained message) and is never acted on. Otherwise it
   * becomes the newest when it is.
   */
  isEarlierRun(ann: Pick<RoundAnnouncement, 'runId' | 'issuedAt'>): boolean {
    const newest = this.newest;
    if (newest && newest.runId !== ann.runId && ann.issuedAt < newest.issuedAt) return true;
    if (!newest || ann.issuedAt >= newest.issuedAt) this.newest = { runId: ann.runId, issuedAt: ann.issuedAt };
    return false;
  }
}

function key(ann: RoundId): string {
  return `${ann.runId}/${ann.round}`;
}
