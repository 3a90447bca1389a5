import { mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * Write a file so that readers see the old content or the new one, never half of it: write a
 * temporary file in the same folder, fsync it, rename it over the target (rename is atomic on
 * POSIX file systems), then fsync the folder so the rename survives a power cut.
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFileSynced(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(dirname(path));
}

/** Write a file and fsync it (no rename: for files inside a folder that is itself renamed into place). */
export async function writeFileSynced(path: string, data: Uint8Array | string): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // Some file systems refuse fsync on directories; the rename is still atomic there.
  }
}

/**
 * State files as one line of JSON (`jq . FILE` shows them indented). Not indented on disk: the
 * files that grow with the sites (journal.json, a version's meta.json) were four times their
 * compact size indented, 0.7 MB against 0.18 MB for 300 sites, and the aggregator held each as a
 * string and a Buffer while writing it (docs/scaling.md, "State files written compact").
 */
export function stateJson(value: unknown): string {
  return JSON.stringify(value) + '\n';
}

export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, stateJson(value));
}

export { writeFile };
