import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic, writeJsonAtomic } from '../shared/fs-atomic.js';
import { sha256Hex } from '../shared/tensor-bundle.js';

/**
 * What the agent has sent, on its own disk, so that a power cut in the middle of an upload is
 * not a reason to train again or to send a second, different update for the same round:
 *
 *   <dir>/r<round>.flb    the update bundle, written before the first chunk leaves
 *   <dir>/r<round>.json   {round, baseVersion, sha256, state: pending | accepted | rejected}
 *
 * After a restart with the round still open, a pending update is resumed (the aggregator says
 * which chunks it still needs), an accepted one is not sent again.
 */
export type UploadState = 'pending' | 'accepted' | 'rejected';

export interface UploadRecord {
  round: number;
  baseVersion: number;
  sha256: string;
  state: UploadState;
  reason?: string | null;
}

export class UpdateJournal {
  private readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  private paths(round: number) {
    return { bundle: join(this.dir, `r${round}.flb`), record: join(this.dir, `r${round}.json`) };
  }

  async record(round: number): Promise<UploadRecord | null> {
    try {
      return JSON.parse(await readFile(this.paths(round).record, 'utf8')) as UploadRecord;
    } catch {
      return null;
    }
  }

  /** The saved bundle of a pending upload, if it is intact (its SHA-256 matches the record). */
  async pendingBundle(round: number, baseVersion: number): Promise<Buffer | null> {
    const rec = await this.record(round);
    if (!rec || rec.state !== 'pending' || rec.baseVersion !== baseVersion) return null;
    try {
      const bytes = await readFile(this.paths(round).bundle);
      return sha256Hex(bytes) === rec.sha256 ? bytes : null;
    } catch {
      return null;
    }
  }

  async savePending(round: number, baseVersion: number, bundle: Uint8Array): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const p = this.paths(round);
    await writeFileAtomic(p.bundle, bundle);
    await writeJsonAtomic(p.record, { round, baseVersion, sha256: sha256Hex(bundle), state: 'pending' } satisfies UploadRecord);
  }

  async settle(round: number, state: 'accepted' | 'rejected', reason: string | null = null): Promise<void> {
    const rec = await this.record(round);
    if (!rec) return;
    await writeJsonAtomic(this.paths(round).record, { ...rec, state, reason });
    // The bundle is no longer needed once the aggregator has decided.
    await rm(this.paths(round).bundle, { force: true });
  }

  /** Forget rounds before `round` (they are closed; nothing about them can change). */
  async pruneBefore(round: number): Promise<void> {
    let entries: string[];
    try {
      entries = await readdir(this.dir);
    } catch {
      return;
    }
    for (const e of entries) {
      const m = /^r(\d+)\.(flb|json)$/.exec(e);
      if (m && Number(m[1]) < round) await rm(join(this.dir, e), { force: true });
    }
  }
}
