import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../shared/util/fs-atomic.js';
import type { Logger } from '../shared/util/logger.js';
import { sha256Hex } from '../shared/bundle/tensor-bundle.js';

/**
 * Downloaded global models, kept on the agent's disk so a restart does not download them again.
 * Written atomically and checked against the SHA-256 on every read: a half-written or corrupted
 * file is deleted and downloaded again, never trained on.
 */
export class ModelCache {
  private readonly dir: string;
  private readonly log: Logger;
  /** Versions to keep besides the one just written. */
  private readonly keep: number;
  /** Cached files found corrupt (and deleted) so far. */
  corruptions = 0;

  constructor(dir: string, log: Logger, keep = 1) {
    this.dir = dir;
    this.log = log;
    this.keep = keep;
  }

  private file(version: number, sha256: string): string {
    return join(this.dir, `v${version}-${sha256.slice(0, 16)}.flb`);
  }

  async get(version: number, sha256: string): Promise<Buffer | null> {
    const path = this.file(version, sha256);
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch {
      return null;
    }
    if (sha256Hex(bytes) !== sha256) {
      this.log.warn({ path, version, code: 'FL_MODEL_STORE' }, 'cached model is corrupt; deleting it and downloading again');
      this.corruptions++;
      await rm(path, { force: true });
      return null;
    }
    return bytes;
  }

  async put(version: number, sha256: string, bundle: Uint8Array): Promise<void> {
    await writeFileAtomic(this.file(version, sha256), bundle);
    await this.prune(version);
  }

  /**
   * Let `write` fill a temporary file (e.g. a download, verified as it arrives), then move it into
   * place atomically. Returns the cached file's path.
   */
  async receive(version: number, sha256: string, write: (partPath: string) => Promise<unknown>): Promise<string> {
    await mkdir(this.dir, { recursive: true });
    const path = this.file(version, sha256);
    const part = `${path}.part`;
    try {
      await write(part);
      await rename(part, path);
    } catch (err) {
      await rm(part, { force: true });
      throw err;
    }
    await fsyncDir(this.dir);
    await this.prune(version);
    return path;
  }

  private async prune(version: number): Promise<void> {
    // Old versions are not needed again (rounds only move forward).
    const entries = await readdir(this.dir).catch(() => [] as string[]);
    const versions = entries
      .map((e) => ({ e, m: /^v(\d+)-[0-9a-f]+\.flb$/.exec(e) }))
      .filter((x) => x.m && Number(x.m[1]) < version)
      .sort((a, b) => Number(b.m![1]) - Number(a.m![1]));
    for (const old of versions.slice(this.keep)) await rm(join(this.dir, old.e), { force: true });
  }
}
