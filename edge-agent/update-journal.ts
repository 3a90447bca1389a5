import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isBundleSource, memorySource, openFileSource, type BundleSource, type FileBundleSource } from '../shared/bundle/bundle-source.js';
import { fsyncDir, writeJsonAtomic } from '../shared/util/fs-atomic.js';

/**
 * What the agent has sent, on its own disk, so that a power cut in the middle of an upload is
 * not a reason to train again or to send a second, different update for the same round:
 *
 *   <dir>/r<round>.flb    the update bundle (encoded as the round asked), written before the first chunk leaves
 *   <dir>/r<round>.json   {round, baseVersion, sha256, upload, state: pending | accepted | rejected}
 *
 * After a restart with the round still open, a pending update is resumed under the same upload
 * id (the aggregator says which chunks it still needs), an accepted one is not sent again. The
 * bundle is written and read as a stream: a 557 MB update never needs a second copy in memory.
 */
export type UploadState = 'pending' | 'accepted' | 'rejected';

export interface UploadRecord {
  round: number;
  /** The federation run of the round (protocol `runId`); absent in records of older agents. */
  runId?: string;
  baseVersion: number;
  sha256: string;
  /** The upload id the chunks carry (protocol: update-chunk `upload`). */
  upload?: string;
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

  /**
   * The saved bundle of a pending upload, if it is intact (its SHA-256 matches the record), as a
   * file source (close it when done) with its SHA-256 and upload id.
   */
  async pendingUpload(round: number, baseVersion: number, runId?: string): Promise<{ source: FileBundleSource; sha256: string; upload: string } | null> {
    const rec = await this.record(round);
    if (!rec || rec.state !== 'pending' || rec.baseVersion !== baseVersion) return null;
    if (runId !== undefined && rec.runId !== undefined && rec.runId !== runId) return null;
    const path = this.paths(round).bundle;
    try {
      const { size } = await stat(path);
      const source = await openFileSource([{ path, bytes: size }]);
      const hash = createHash('sha256');
      const buf = Buffer.allocUnsafeSlow(Math.min(4 << 20, Math.max(1, size)));
      for (let pos = 0; pos < size; pos += buf.byteLength) {
        const piece = buf.subarray(0, Math.min(buf.byteLength, size - pos));
        await source.read(pos, piece);
        hash.update(piece);
      }
      if (hash.digest('hex') !== rec.sha256) {
        await source.close();
        return null;
      }
      return { source, sha256: rec.sha256, upload: rec.upload ?? randomBytes(8).toString('hex') };
    } catch {
      return null;
    }
  }

  /** The saved bundle of a pending upload in memory (small updates, tests); see pendingUpload. */
  async pendingBundle(round: number, baseVersion: number): Promise<Buffer | null> {
    const pending = await this.pendingUpload(round, baseVersion);
    if (!pending) return null;
    await pending.source.close();
    return readFile(this.paths(round).bundle);
  }

  /**
   * Write an update to disk (streamed from its source, hashed on the way, fsynced, renamed into
   * place) before any chunk leaves, and record it as pending under a fresh upload id.
   */
  async savePending(round: number, baseVersion: number, bundle: Uint8Array | BundleSource, runId?: string): Promise<{ sha256: string; upload: string }> {
    await mkdir(this.dir, { recursive: true });
    const p = this.paths(round);
    const source = isBundleSource(bundle) ? bundle : memorySource(bundle);
    const tmp = `${p.bundle}.${randomBytes(4).toString('hex')}.tmp`;
    const hash = createHash('sha256');
    const fh = await open(tmp, 'w');
    try {
      const buf = Buffer.allocUnsafeSlow(Math.min(4 << 20, Math.max(1, source.byteLength)));
      for (let pos = 0; pos < source.byteLength; pos += buf.byteLength) {
        const piece = buf.subarray(0, Math.min(buf.byteLength, source.byteLength - pos));
        await source.read(pos, piece);
        hash.update(piece);
        await fh.write(piece, 0, piece.byteLength, pos);
      }
      await fh.sync();
    } catch (err) {
      await fh.close();
      await rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    await rename(tmp, p.bundle);
    await fsyncDir(this.dir);
    const saved = { sha256: hash.digest('hex'), upload: randomBytes(8).toString('hex') };
    await writeJsonAtomic(p.record, { round, ...(runId !== undefined ? { runId } : {}), baseVersion, ...saved, state: 'pending' } satisfies UploadRecord);
    return saved;
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
