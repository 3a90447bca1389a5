import { open, readdir, readFile, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic, writeJsonAtomic } from '../shared/fs-atomic.js';
import type { TensorBlockReader } from '../shared/fedavg.js';
import type { TensorSpec } from '../shared/tensor-bundle.js';
import type { AcceptedUpdate } from './round-state.js';

/**
 * Verified updates wait on disk until their round closes, so the aggregator's memory does not grow
 * with the number of agents (FedAvg then streams them block by block), and so an aggregator that
 * restarts mid-round still has every update it already verified.
 *
 *   <root>/r<round>/<agent>.flb    the update bundle, exactly as received
 *   <root>/r<round>/<agent>.json   what was accepted: sample count, SHA-256, metrics, tensor layout
 */

export interface SpooledUpdate extends AcceptedUpdate {
  payloadStart: number;
  tensors: TensorSpec[];
}

export class UpdateSpool {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  private roundDir(round: number): string {
    return join(this.root, `r${round}`);
  }

  async put(round: number, bundle: Uint8Array, info: SpooledUpdate): Promise<void> {
    // Bundle first, record second: a record on disk always has its bundle.
    await writeFileAtomic(join(this.roundDir(round), `${info.agent}.flb`), bundle);
    await writeJsonAtomic(join(this.roundDir(round), `${info.agent}.json`), info);
  }

  /** The updates already accepted for a round (after a restart). */
  async list(round: number): Promise<SpooledUpdate[]> {
    let entries: string[];
    try {
      entries = await readdir(this.roundDir(round));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: SpooledUpdate[] = [];
    for (const e of entries.filter((x) => x.endsWith('.json')).sort()) {
      out.push(JSON.parse(await readFile(join(this.roundDir(round), e), 'utf8')) as SpooledUpdate);
    }
    return out;
  }

  /** Block readers over the spooled bundles, for fedAvgStreamed. Close them when done. */
  async openReaders(round: number, updates: readonly SpooledUpdate[]): Promise<(TensorBlockReader & { close(): Promise<void> })[]> {
    const readers: (TensorBlockReader & { close(): Promise<void> })[] = [];
    try {
      for (const u of updates) {
        const fh: FileHandle = await open(join(this.roundDir(round), `${u.agent}.flb`), 'r');
        const specs = new Map(u.tensors.map((t) => [t.name, t]));
        readers.push({
          id: u.agent,
          weight: u.sampleCount,
          async read(name: string, start: number, out: Float32Array) {
            const spec = specs.get(name);
            if (!spec) throw new Error(`spooled update of ${u.agent} has no tensor ${name}`);
            const target = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
            const position = u.payloadStart + spec.offset + start * 4;
            let done = 0;
            while (done < target.byteLength) {
              const { bytesRead } = await fh.read(target, done, target.byteLength - done, position + done);
              if (bytesRead === 0) throw new Error(`spooled update of ${u.agent} is truncated`);
              done += bytesRead;
            }
          },
          close: () => fh.close(),
        });
      }
    } catch (err) {
      await Promise.all(readers.map((r) => r.close()));
      throw err;
    }
    return readers;
  }

  async dropRound(round: number): Promise<void> {
    await rm(this.roundDir(round), { recursive: true, force: true });
  }
}
