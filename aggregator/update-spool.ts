import type { LayerMoments } from '../shared/fl/bn-statistics.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { readFully } from '../shared/bundle/bundle-source.js';
import { fsyncDir, writeJsonAtomic } from '../shared/util/fs-atomic.js';
import type { TensorBlockReader } from '../shared/fl/fedavg.js';
import type { Logger } from '../shared/util/logger.js';
import { decodeValues, unitOf } from '../shared/bundle/value-encodings.js';
import { elementCount, type TensorSpec } from '../shared/bundle/tensor-bundle.js';
import type { AcceptedUpdate } from './round-state.js';
import { evalMetricsSchema, type EvalMetrics } from '../shared/protocol/messages.js';

/**
 * Updates wait on disk until their round closes, so the aggregator's memory does not grow with the
 * number of agents (FedAvg then streams them block by block), and so an aggregator that restarts
 * mid-round still has every update it already verified.
 *
 *   <root>/r<round>/<agent>.<upload>.part  an update being received (chunks written in place)
 *   <root>/r<round>/<agent>.flb            a verified update bundle, exactly as received
 *   <root>/r<round>/<agent>.json           what was accepted: sample count, SHA-256, metrics, tensor layout
 */

export interface SpooledUpdate extends AcceptedUpdate {
  /** The agent's upload id (chunks of this upload arriving late are duplicates, not a second update). */
  upload: string;
  /** The values are differences to the round's base model. */
  delta: boolean;
  payloadStart: number;
  tensors: TensorSpec[];
  /** When the update was verified and spooled (ms since the epoch). */
  acceptedAt: number;
}

/** float32 values of the base model, for updates sent as differences to it. */
export interface BaseValues {
  read(name: string, start: number, out: Float32Array): Promise<void>;
}

/** An evaluation report as the spool keeps it. */
export interface SpooledEval {
  metrics: EvalMetrics;
  downloadedBytes: number;
}

export type SpoolReader = TensorBlockReader & { close(): Promise<void> };

export class UpdateSpool {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  private roundDir(round: number): string {
    return join(this.root, `r${round}`);
  }

  /** Make the round's folder (synchronously: chunk handlers open files in it right away). */
  ensureRound(round: number): void {
    mkdirSync(this.roundDir(round), { recursive: true });
  }

  /** Where an update is written while it arrives. */
  partPath(round: number, agent: string, upload: string): string {
    return join(this.roundDir(round), `${agent}.${upload}.part`);
  }

  /** Move a received, verified (and fsynced) update into place and record it: bundle first, record second. */
  async commit(round: number, info: SpooledUpdate, partPath: string): Promise<void> {
    await rename(partPath, join(this.roundDir(round), `${info.agent}.flb`));
    await fsyncDir(this.roundDir(round));
    await writeJsonAtomic(join(this.roundDir(round), `${info.agent}.json`), info);
  }

  /** Keep an agent's BN statistics of a statistics round (small JSON; not `.json`, which names spooled updates). */
  async saveStatistics(round: number, agent: string, moments: readonly LayerMoments[]): Promise<void> {
    const plain = moments.map((m) => ({ layer: m.layer, count: m.count, mean: [...m.mean], m2: [...m.m2] }));
    await writeJsonAtomic(join(this.roundDir(round), `${agent}.bn-stats`), plain);
  }

  /** The BN statistics received for a round before a restart. */
  async listStatistics(round: number): Promise<[string, LayerMoments[]][]> {
    const out: [string, LayerMoments[]][] = [];
    for (const e of (await this.entries(round)).filter((x) => x.endsWith('.bn-stats')).sort()) {
      const plain = JSON.parse(await readFile(join(this.roundDir(round), e), 'utf8')) as { layer: string; count: number; mean: number[]; m2: number[] }[];
      out.push([e.slice(0, -'.bn-stats'.length), plain.map((m) => ({ ...m, mean: Float64Array.from(m.mean), m2: Float64Array.from(m.m2) }))]);
    }
    return out;
  }

  /**
   * Keep an agent's evaluation of the round's base model (`<agent>.eval`, a few KiB). One small
   * file per report, where saving the journal per report rewrote every site's metrics each time:
   * O(sites) bytes per report, O(sites^2) per round, and the aggregator's memory grew with the
   * sites (docs/scaling.md, "The aggregator's memory at small updates").
   */
  async saveEval(round: number, agent: string, report: SpooledEval): Promise<void> {
    await writeJsonAtomic(join(this.roundDir(round), `${agent}.eval`), report);
  }

  /** The evaluations received for a round before a restart; a damaged file is skipped (the agent's metrics are then missing, as if it had not reported). */
  async listEvals(round: number, log?: Logger): Promise<[string, SpooledEval][]> {
    const out: [string, SpooledEval][] = [];
    for (const e of (await this.entries(round)).filter((x) => x.endsWith('.eval')).sort()) {
      try {
        const raw = JSON.parse(await readFile(join(this.roundDir(round), e), 'utf8')) as { metrics: unknown; downloadedBytes: unknown };
        const downloadedBytes = typeof raw.downloadedBytes === 'number' && raw.downloadedBytes >= 0 ? raw.downloadedBytes : 0;
        out.push([e.slice(0, -'.eval'.length), { metrics: evalMetricsSchema.parse(raw.metrics), downloadedBytes }]);
      } catch (err) {
        log?.warn({ round, file: e, err: (err as Error).message }, 'spooled evaluation unreadable; skipped');
      }
    }
    return out;
  }

  private async entries(round: number): Promise<string[]> {
    try {
      return await readdir(this.roundDir(round));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  /**
   * The updates already accepted for a round (after a restart). Each bundle is checked against its
   * recorded size and SHA-256: one damaged by a crash is dropped (logged), never averaged.
   */
  async list(round: number, log?: Logger): Promise<SpooledUpdate[]> {
    let entries: string[];
    try {
      entries = await readdir(this.roundDir(round));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: SpooledUpdate[] = [];
    for (const e of entries.filter((x) => x.endsWith('.json')).sort()) {
      const info = JSON.parse(await readFile(join(this.roundDir(round), e), 'utf8')) as SpooledUpdate;
      const file = join(this.roundDir(round), `${info.agent}.flb`);
      const problem = await checkFile(file, info.bytes, info.sha256);
      if (problem) {
        log?.warn({ round, agent: info.agent, file }, `spooled update dropped: ${problem}`);
        await rm(join(this.roundDir(round), e), { force: true });
        continue;
      }
      out.push(info);
    }
    // Half-received uploads do not survive a restart: their agents resend on the missing list.
    for (const e of entries.filter((x) => x.endsWith('.part'))) await rm(join(this.roundDir(round), e), { force: true });
    return out;
  }

  /**
   * Block readers over the spooled bundles, for fedAvgStreamed: values come back as float32
   * whatever the update's encoding (f16 and q8 are decoded, differences added to `base`).
   * Close them when done.
   */
  async openReaders(round: number, updates: readonly SpooledUpdate[], base?: BaseValues): Promise<SpoolReader[]> {
    const readers: SpoolReader[] = [];
    try {
      for (const u of updates) {
        if (u.delta && !base) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `update of ${u.agent} holds differences, but no base model was given`);
        const fh: FileHandle = await open(join(this.roundDir(round), `${u.agent}.flb`), 'r');
        readers.push(new SpooledUpdateReader(u, fh, u.delta ? base! : null));
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

  async ensureRoot(): Promise<void> {
    await mkdir(this.root, { recursive: true });
  }
}

async function checkFile(path: string, bytes: number, sha256: string): Promise<string | null> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch {
    return 'its bundle file is missing';
  }
  if (size !== bytes) return `its bundle file has ${size} bytes, ${bytes} were accepted`;
  const hash = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafeSlow(4 << 20);
    for (let pos = 0; pos < size;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.byteLength, size - pos), pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  const got = hash.digest('hex');
  return got === sha256 ? null : `its bundle file's SHA-256 is ${got}, ${sha256} was accepted`;
}

class SpooledUpdateReader implements SpoolReader {
  readonly id: string;
  readonly weight: number;
  readonly steps?: number;
  private readonly update: SpooledUpdate;
  private readonly fh: FileHandle;
  private readonly base: BaseValues | null;
  private readonly specs: Map<string, TensorSpec>;
  private bytes = new Uint8Array(0);
  private baseScratch = new Float32Array(0);
  private valueScratch = new Float32Array(0);

  constructor(update: SpooledUpdate, fh: FileHandle, base: BaseValues | null) {
    this.update = update;
    this.id = update.agent;
    this.weight = update.sampleCount;
    if (update.steps !== undefined) this.steps = update.steps;
    this.fh = fh;
    this.base = base;
    this.specs = new Map(update.tensors.map((t) => [t.name, t]));
  }

  async read(name: string, start: number, out: Float32Array): Promise<void> {
    const spec = this.specs.get(name);
    if (!spec) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `spooled update of ${this.update.agent} has no tensor ${name}`);
    const where = `spooled update of ${this.update.agent}`;
    const tensorStart = this.update.payloadStart + spec.offset;
    const count = out.length;
    if (spec.dtype === 'float32') {
      await readFully(this.fh, new Uint8Array(out.buffer, out.byteOffset, out.byteLength), tensorStart + start * 4, where);
    } else {
      const { unitValues, unitBytes } = unitOf(spec.dtype, spec.block);
      const total = elementCount(spec.shape);
      const firstUnit = Math.floor(start / unitValues);
      const lastUnit = Math.ceil((start + count) / unitValues);
      const v0 = firstUnit * unitValues;
      const v1 = Math.min(total, lastUnit * unitValues);
      const b0 = firstUnit * unitBytes;
      const b1 = Math.min(spec.bytes, lastUnit * unitBytes);
      if (this.bytes.byteLength < b1 - b0) this.bytes = new Uint8Array(b1 - b0);
      const bytes = this.bytes.subarray(0, b1 - b0);
      await readFully(this.fh, bytes, tensorStart + b0, where);
      if (v0 === start && v1 - v0 === count) {
        decodeValues(spec.dtype, bytes, count, out, spec.block);
      } else {
        if (this.valueScratch.length < v1 - v0) this.valueScratch = new Float32Array(v1 - v0);
        const values = this.valueScratch.subarray(0, v1 - v0);
        decodeValues(spec.dtype, bytes, v1 - v0, values, spec.block);
        out.set(values.subarray(start - v0, start - v0 + count));
      }
    }
    if (this.base) {
      if (this.baseScratch.length < count) this.baseScratch = new Float32Array(count);
      const base = this.baseScratch.subarray(0, count);
      await this.base.read(name, start, base);
      // The agent sent fround(x - base): adding the base back in float32 gives x to within an ulp.
      for (let i = 0; i < count; i++) out[i] = out[i]! + base[i]!;
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
