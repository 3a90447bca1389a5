import { mkdir, open, readdir, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { fsyncDir } from '../shared/util/fs-atomic.js';

/**
 * A server optimizer's state (momentum m, second moment v) in files: <stateDir>/server-optimizer/v<N>.state
 * holds the state that goes with global model version N, written while version N is aggregated from
 * its base and renamed into place (after fsync) before the model version is committed. A round reads
 * the file of its base version only, so a round redone after a restart reads the same state and
 * writes the same bytes: the state is journaled by the model store's own versions.
 *
 * Format: uint32 LE header length, the JSON header { format, slots, tensors: [{ name, length }] },
 * then per slot, per tensor, its float32 LE values. float32 because the weights and updates are
 * float32 and a state as large as the model per slot is enough (float64 would double the disk
 * bytes for precision the float32 update cannot use); the step itself runs in float64.
 */
const FORMAT = 'fedline-server-state/1';

/** One round's state: the previous values by slot (null: none yet), the new ones written as they are made. */
export interface StateFileIo {
  read: ((slot: string, name: string, start: number, out: Float32Array) => Promise<boolean>) | null;
  write: (slot: string, name: string, start: number, values: Float32Array) => Promise<void>;
}

interface Layout {
  slots: readonly string[];
  tensors: readonly { name: string; length: number }[];
}

/** Byte offset of each slot's tensor, by `${slot}\0${name}\0${length}` (a tensor whose size changed has no state). */
function offsets(layout: Layout, dataStart: number): Map<string, number> {
  const total = layout.tensors.reduce((s, t) => s + t.length, 0);
  const map = new Map<string, number>();
  layout.slots.forEach((slot, k) => {
    let at = dataStart + k * total * 4;
    for (const t of layout.tensors) {
      map.set(key(slot, t.name, t.length), at);
      at += t.length * 4;
    }
  });
  return map;
}

const key = (slot: string, name: string, length: number) => `${slot}\u0000${name}\u0000${length}`;

async function readFully(fh: FileHandle, target: Buffer, position: number, what: string): Promise<void> {
  let done = 0;
  while (done < target.byteLength) {
    const { bytesRead } = await fh.read(target, done, target.byteLength - done, position + done);
    if (bytesRead === 0) throw new FedlineError(ErrorCodes.MODEL_STORE, `server optimizer state ${what} is truncated`);
    done += bytesRead;
  }
}

export class ServerStateFiles {
  readonly dir: string;

  /** `subdir`: one folder per kind of state (server-optimizer; scaffold for SCAFFOLD's variate c). */
  constructor(stateDir: string, subdir = 'server-optimizer') {
    this.dir = join(stateDir, subdir);
  }

  path(version: number): string {
    return join(this.dir, `v${version}.state`);
  }

  /**
   * Opens the state of `base` for reading (null reader when there is none: the optimizer starts from
   * its initial state) and a new state file for `next`. commit() makes the new state durable; close() always.
   */
  async open(base: number, next: number, layout: Layout): Promise<StateFileIo & { commit(): Promise<void>; close(): Promise<void> }> {
    await mkdir(this.dir, { recursive: true });
    const prev = await this.openPrevious(base);
    const header = Buffer.from(JSON.stringify({ format: FORMAT, slots: layout.slots, tensors: layout.tensors }));
    const tmp = `${this.path(next)}.tmp`;
    const out = await open(tmp, 'w');
    const lead = Buffer.alloc(4);
    lead.writeUInt32LE(header.byteLength);
    await out.write(Buffer.concat([lead, header]), 0, 4 + header.byteLength, 0);
    const at = offsets(layout, 4 + header.byteLength);
    const lengths = new Map(layout.tensors.map((t) => [t.name, t.length]));
    let closed = false;
    let committed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      await Promise.all([out.close(), prev?.fh.close()]);
    };
    return {
      read: prev
        ? async (slot, name, start, target) => {
            const pos = prev.at.get(key(slot, name, lengths.get(name) ?? -1));
            if (pos === undefined) return false; // not federated when the base was made: start this tensor afresh
            await readFully(prev.fh, Buffer.from(target.buffer, target.byteOffset, target.byteLength), pos + start * 4, `v${base}`);
            return true;
          }
        : null,
      write: async (slot, name, start, values) => {
        const pos = at.get(key(slot, name, lengths.get(name) ?? -1));
        if (pos === undefined) throw new RangeError(`no state slot ${slot} for ${name}`);
        await out.write(Buffer.from(values.buffer, values.byteOffset, values.byteLength), 0, values.byteLength, pos + start * 4);
      },
      commit: async () => {
        await out.sync();
        await close();
        await rename(tmp, this.path(next));
        committed = true;
        await fsyncDir(this.dir);
        await this.prune(base);
      },
      close: async () => {
        await close();
        if (!committed) await rm(tmp, { force: true });
      },
    };
  }

  /** Every tensor of one slot of `version`'s state (null: no state file, or a tensor missing: the state is zero). */
  async readSlot(version: number, slot: string, tensors: readonly { name: string; length: number }[]): Promise<Map<string, Float32Array> | null> {
    const prev = await this.openPrevious(version);
    if (!prev) return null;
    try {
      const out = new Map<string, Float32Array>();
      for (const t of tensors) {
        const pos = prev.at.get(key(slot, t.name, t.length));
        if (pos === undefined) return null;
        const values = new Float32Array(t.length);
        await readFully(prev.fh, Buffer.from(values.buffer), pos, `v${version}`);
        out.set(t.name, values);
      }
      return out;
    } finally {
      await prev.fh.close();
    }
  }

  /** The base's state when it exists and has every tensor and slot of `layout`; else null (start afresh). */
  private async openPrevious(base: number): Promise<{ fh: FileHandle; at: Map<string, number> } | null> {
    let fh: FileHandle;
    try {
      fh = await open(this.path(base), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      const lead = Buffer.alloc(4);
      await readFully(fh, lead, 0, `v${base}`);
      const header = Buffer.alloc(lead.readUInt32LE(0));
      await readFully(fh, header, 4, `v${base}`);
      const parsed = JSON.parse(header.toString('utf8')) as { format?: string } & Layout;
      if (parsed.format !== FORMAT) throw new FedlineError(ErrorCodes.MODEL_STORE, `server optimizer state v${base}: unknown format ${parsed.format}`);
      return { fh, at: offsets(parsed, 4 + header.byteLength) };
    } catch (err) {
      await fh.close();
      throw err instanceof FedlineError ? err : new FedlineError(ErrorCodes.MODEL_STORE, `server optimizer state v${base}: ${(err as Error).message}`);
    }
  }

  /** Drops the states of versions older than `base` (kept: the base's, so that a redone round finds it, and newer). */
  private async prune(base: number): Promise<void> {
    for (const f of await readdir(this.dir)) {
      const m = /^v(\d+)\.state$/.exec(f);
      if (m && Number(m[1]) < base) await rm(join(this.dir, f), { force: true });
    }
  }
}
