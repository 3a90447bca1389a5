import { watch, type FSWatcher } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import type { Logger } from '../shared/util/logger.js';
import { IMAGE_EXTENSIONS } from '../training/image-folder.js';

export interface FolderWatcherOptions {
  dir: string;
  /** A file is handed over once its size and mtime stayed the same for this long, ms. */
  settleMs: number;
  /** Full look through the folder this often (file-system events can be missed, e.g. on network file systems), ms. */
  rescanMs: number;
  /** Hand over the images already in the folder at start. */
  includeExisting: boolean;
  log: Logger;
  onFile: (path: string) => void;
}

/**
 * New image files in a folder, each handed over once: inotify events (fs.watch) for speed, a
 * periodic rescan so that nothing is missed, and a settle time so that a file still being
 * written is not read half-way (writers should still write a temporary name and rename it; names
 * starting with "." are ignored). A file that is replaced (new size or mtime) counts as new.
 */
export class FolderWatcher {
  private readonly o: FolderWatcherOptions;
  private watcher: FSWatcher | null = null;
  private rescanTimer: NodeJS.Timeout | null = null;
  private readonly handed = new Map<string, string>();
  private readonly settling = new Map<string, NodeJS.Timeout>();
  private stopped = false;

  constructor(o: FolderWatcherOptions) {
    this.o = o;
  }

  async start(): Promise<void> {
    const names = await readdir(this.o.dir);
    if (!this.o.includeExisting) {
      for (const name of names) {
        const s = await stat(join(this.o.dir, name)).catch(() => null);
        if (s?.isFile()) this.handed.set(name, `${s.size}:${s.mtimeMs}`);
      }
    }
    this.watcher = watch(this.o.dir, { persistent: true }, (_event, name) => {
      if (name) this.consider(name.toString());
    });
    this.watcher.on('error', (err) => this.o.log.warn({ dir: this.o.dir, err: err.message }, 'folder watch error; the periodic rescan continues'));
    this.rescanTimer = setInterval(() => this.rescan(), this.o.rescanMs);
    this.rescanTimer.unref?.();
    await this.rescan();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    if (this.rescanTimer) clearInterval(this.rescanTimer);
    for (const t of this.settling.values()) clearTimeout(t);
    this.settling.clear();
  }

  /** Forget a file (e.g. after it was moved away), so a new file of the same name counts. */
  forget(name: string): void {
    this.handed.delete(name);
  }

  private async rescan(): Promise<void> {
    if (this.stopped) return;
    try {
      for (const name of (await readdir(this.o.dir)).sort()) this.consider(name);
    } catch (err) {
      this.o.log.warn({ dir: this.o.dir, err: (err as Error).message }, 'cannot read the watched folder');
    }
  }

  private consider(name: string): void {
    if (this.stopped || name.startsWith('.') || !IMAGE_EXTENSIONS.has(extname(name).toLowerCase()) || this.settling.has(name)) return;
    this.settle(name, null);
  }

  private settle(name: string, previous: string | null): void {
    const timer = setTimeout(
      async () => {
        this.settling.delete(name);
        if (this.stopped) return;
        const s = await stat(join(this.o.dir, name)).catch(() => null);
        if (!s || !s.isFile()) {
          if (!s) this.handed.delete(name);
          return;
        }
        const sig = `${s.size}:${s.mtimeMs}`;
        if (this.handed.get(name) === sig) return;
        if (sig !== previous) return this.settle(name, sig); // still changing: wait once more
        this.handed.set(name, sig);
        this.o.onFile(join(this.o.dir, name));
      },
      previous === null ? 0 : this.o.settleMs,
    );
    this.settling.set(name, timer);
  }
}
