import { mkdir, readdir, readFile, rm, open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { openFileSource, readFully, type FileBundleSource } from '../shared/bundle/bundle-source.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { writeJsonAtomic } from '../shared/util/fs-atomic.js';
import type { EvalMetrics, ModelMeta } from '../shared/protocol/messages.js';
import { modelMetaSchema } from '../shared/protocol/messages.js';
import {
  decodeBundle,
  decodeBundleHeader,
  encodeBundlePrefix,
  layoutTensors,
  sha256Hex,
  type BundleHeader,
  type TensorSpec,
} from '../shared/bundle/tensor-bundle.js';
import type { BaseValues } from './update-spool.js';
import type { TensorBlockReader } from '../shared/fl/fedavg.js';
import { VersionWriter } from './version-writer.js';

/**
 * Every global model version on disk as a TensorFlow.js layers model, so `tf.loadLayersModel`
 * (or training/model-io.ts loadLayersModelFromDir) opens it directly:
 *
 *   <root>/v<version>/model.json    tfjs layers model: topology + weightsManifest
 *   <root>/v<version>/weights.bin   the raw float32 weights (= the bundle payload)
 *   <root>/v<version>/header.bin    the bundle header; header.bin + weights.bin = the bundle
 *   <root>/v<version>/meta.json     SHA-256, round, contributors, metrics per agent
 *
 * A version is written into a temporary folder and renamed into place, so a crash never leaves a
 * half-written version behind. Versions are written and read as streams (createVersion,
 * openBundle, openValues), so a 557 MB model never has to be in memory as a whole.
 */

export interface StoredModel {
  version: number;
  round: number;
  sha256: string;
  /** Size of the whole bundle (header + weights). */
  bytes: number;
  headerBytes: number;
  createdAt: number;
  tensors: TensorSpec[];
  headTensors: string[];
  classes: string[];
  inputShape: number[];
  /** Samples each agent contributed to this version (empty for the initial model). */
  contributors: Record<string, number>;
  /** This version evaluated on each agent's local test split, as the agents reported it. */
  metrics: Record<string, EvalMetrics>;
  /** Local metrics of each agent's update (after local training) that went into this version. */
  updateMetrics: Record<string, EvalMetrics | null>;
}

export interface ModelStore {
  readonly root: string;
  versions(): Promise<number[]>;
  latest(): Promise<StoredModel | null>;
  get(version: number): Promise<StoredModel | null>;
  /** Store a model bundle as version `meta.version` (taken from the bundle's own meta). */
  save(bundle: Uint8Array, extra?: Pick<Partial<StoredModel>, 'contributors' | 'updateMetrics'>): Promise<StoredModel>;
  /** Write a new version as a stream of payload bytes (see VersionWriter). */
  createVersion(
    meta: ModelMeta,
    tensors: readonly Pick<TensorSpec, 'name' | 'shape'>[],
    extra?: Pick<Partial<StoredModel>, 'contributors' | 'updateMetrics'>,
  ): Promise<VersionWriter>;
  /** A whole version in memory, SHA-256 checked (small models, tests). */
  readBundle(version: number): Promise<Buffer>;
  /** A version's header (tensor layout and meta). */
  readHeader(version: number): Promise<{ header: BundleHeader<ModelMeta>; payloadStart: number }>;
  /** A version's bundle bytes, read from disk as needed (publishing). */
  openBundle(version: number): Promise<FileBundleSource>;
  /** A version's float32 values, tensor by tensor, block by block. */
  openValues(version: number): Promise<BaseValues & { close(): Promise<void> }>;
  /** Check a version's files against its SHA-256 (streamed); throws FL_MODEL_STORE when they differ. */
  verify(version: number): Promise<void>;
  recordMetrics(version: number, agent: string, metrics: EvalMetrics): Promise<void>;
  /** Read a version's tensors block by block from disk (no whole-model copy in memory). */
  openTensorReader(version: number): Promise<TensorBlockReader & { close(): Promise<void> }>;
  dir(version: number): string;
}

/**
 * The version folders on disk: listing, verification and streamed readers. A new version is
 * written by version-writer.ts (weights, header, model.json, meta.json, then one rename); release
 * stages are kept apart, in model-registry.ts.
 */
export class FsModelStore implements ModelStore {
  readonly root: string;
  /** Serialises meta.json read-modify-write cycles. */
  private metaChain: Promise<unknown> = Promise.resolve();
  /** Per version, the metrics of the next meta.json write (see recordMetrics). */
  private readonly metricsBatches = new Map<number, { metrics: Record<string, EvalMetrics>; written: Promise<void> }>();

  constructor(root: string) {
    this.root = root;
  }

  dir(version: number): string {
    return join(this.root, `v${version}`);
  }

  async versions(): Promise<number[]> {
    let entries: string[];
    try {
      entries = await readdir(this.root);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    return entries
      .map((e) => /^v(\d+)$/.exec(e))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
  }

  async latest(): Promise<StoredModel | null> {
    const versions = await this.versions();
    for (let i = versions.length - 1; i >= 0; i--) {
      const meta = await this.get(versions[i]!);
      if (meta) return meta;
    }
    return null;
  }

  async get(version: number): Promise<StoredModel | null> {
    try {
      return JSON.parse(await readFile(join(this.dir(version), 'meta.json'), 'utf8')) as StoredModel;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: meta of version ${version} is unreadable: ${(err as Error).message}`);
    }
  }

  async save(bundle: Uint8Array, extra: Pick<Partial<StoredModel>, 'contributors' | 'updateMetrics'> = {}): Promise<StoredModel> {
    const decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
    if (decoded.header.tensors.some((t) => t.dtype !== 'float32'))
      throw new FedlineError(ErrorCodes.MODEL_STORE, 'model store: global models hold float32 tensors only');
    const writer = await this.createVersion(decoded.header.meta, decoded.header.tensors, extra);
    try {
      await writer.write(bundle.subarray(decoded.payloadStart));
    } catch (err) {
      await writer.abort();
      throw err;
    }
    const stored = await writer.commit();
    if (stored.sha256 !== sha256Hex(bundle))
      throw new FedlineError(ErrorCodes.MODEL_STORE, 'model store: a saved bundle is not byte-identical to its input (layout differs)');
    return stored;
  }

  async createVersion(
    meta: ModelMeta,
    tensors: readonly Pick<TensorSpec, 'name' | 'shape'>[],
    extra: Pick<Partial<StoredModel>, 'contributors' | 'updateMetrics'> = {},
  ): Promise<VersionWriter> {
    if (await this.get(meta.version)) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: version ${meta.version} exists already`);
    const { specs, payloadBytes } = layoutTensors(tensors.map((t) => ({ name: t.name, shape: t.shape, dtype: 'float32' as const })));
    const prefix = encodeBundlePrefix(specs, meta);
    await mkdir(this.root, { recursive: true });
    const tmp = join(this.root, `.v${meta.version}.${randomBytes(4).toString('hex')}.tmp`);
    await mkdir(tmp);
    let weights: FileHandle;
    try {
      weights = await open(join(tmp, 'weights.bin'), 'w');
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
    return new VersionWriter({ root: this.root, tmp, target: this.dir(meta.version), meta, specs, prefix, payloadBytes, weights, extra });
  }

  async readHeader(version: number): Promise<{ header: BundleHeader<ModelMeta>; payloadStart: number }> {
    const bytes = await readFile(join(this.dir(version), 'header.bin'));
    const meta = await this.get(version);
    if (!meta) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: no version ${version}`);
    return decodeBundleHeader<ModelMeta>(bytes, meta.bytes, modelMetaSchema);
  }

  async openBundle(version: number): Promise<FileBundleSource> {
    const meta = await this.get(version);
    if (!meta) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: no version ${version}`);
    return openFileSource([
      { path: join(this.dir(version), 'header.bin'), bytes: meta.headerBytes },
      { path: join(this.dir(version), 'weights.bin'), bytes: meta.bytes - meta.headerBytes },
    ]);
  }

  async openValues(version: number): Promise<BaseValues & { close(): Promise<void> }> {
    const meta = await this.get(version);
    if (!meta) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: no version ${version}`);
    const specs = new Map(meta.tensors.map((t) => [t.name, t]));
    const fh = await open(join(this.dir(version), 'weights.bin'), 'r');
    // Every delta update of a round asks for the same base block in turn: keep the last few.
    const cache: { key: string; values: Promise<Float32Array> }[] = [];
    return {
      read: async (name, start, out) => {
        const key = `${name}\0${start}\0${out.length}`;
        let hit = cache.find((c) => c.key === key);
        if (!hit) {
          const spec = specs.get(name);
          if (!spec) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: version ${version} has no tensor ${name}`);
          const values = new Float32Array(out.length);
          hit = { key, values: readFully(fh, new Uint8Array(values.buffer), spec.offset + start * 4, `weights of version ${version}`).then(() => values) };
          cache.push(hit);
          if (cache.length > 4) cache.shift();
        }
        out.set(await hit.values);
      },
      close: () => fh.close(),
    };
  }

  async verify(version: number): Promise<void> {
    const meta = await this.get(version);
    if (!meta) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: no version ${version}`);
    const sizes = await Promise.all(
      ['header.bin', 'weights.bin'].map((f) =>
        stat(join(this.dir(version), f)).then(
          (x) => x.size,
          () => -1,
        ),
      ),
    );
    if (sizes[0] !== meta.headerBytes || sizes[1] !== meta.bytes - meta.headerBytes) {
      throw new FedlineError(
        ErrorCodes.MODEL_STORE,
        `model store: version ${version} is corrupt on disk (header.bin ${sizes[0]} bytes, weights.bin ${sizes[1]} bytes; expected ${meta.headerBytes} and ${meta.bytes - meta.headerBytes})`,
      );
    }
    const source = await this.openBundle(version);
    const hash = createHash('sha256');
    try {
      const buf = Buffer.allocUnsafeSlow(4 << 20);
      for (let pos = 0; pos < source.byteLength; pos += buf.byteLength) {
        const part = buf.subarray(0, Math.min(buf.byteLength, source.byteLength - pos));
        await source.read(pos, part);
        hash.update(part);
      }
    } catch (err) {
      throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: version ${version} cannot be read: ${(err as Error).message}`);
    } finally {
      await source.close();
    }
    const sha = hash.digest('hex');
    if (sha !== meta.sha256)
      throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: version ${version} is corrupt on disk (SHA-256 ${sha} != ${meta.sha256})`);
  }

  async readBundle(version: number): Promise<Buffer> {
    const meta = await this.get(version);
    if (!meta) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: no version ${version}`);
    const [header, weights] = await Promise.all([readFile(join(this.dir(version), 'header.bin')), readFile(join(this.dir(version), 'weights.bin'))]);
    const bundle = Buffer.allocUnsafeSlow(header.byteLength + weights.byteLength);
    header.copy(bundle, 0);
    weights.copy(bundle, header.byteLength);
    const sha = sha256Hex(bundle);
    if (sha !== meta.sha256) {
      throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: version ${version} is corrupt on disk (SHA-256 ${sha} != ${meta.sha256})`);
    }
    return bundle;
  }

  async openTensorReader(version: number): Promise<TensorBlockReader & { close(): Promise<void> }> {
    const meta = await this.get(version);
    if (!meta) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: no version ${version}`);
    const fh = await open(join(this.dir(version), 'weights.bin'), 'r');
    const specs = new Map(meta.tensors.map((t) => [t.name, t]));
    return {
      id: `v${version}`,
      weight: 1,
      async read(name: string, start: number, out: Float32Array) {
        const spec = specs.get(name);
        if (!spec) throw new FedlineError(ErrorCodes.MODEL_STORE, `model version ${version} has no tensor ${name}`);
        const target = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
        let done = 0;
        while (done < target.byteLength) {
          const { bytesRead } = await fh.read(target, done, target.byteLength - done, spec.offset + start * 4 + done);
          if (bytesRead === 0) throw new FedlineError(ErrorCodes.MODEL_STORE, `model version ${version}: weights.bin is truncated`);
          done += bytesRead;
        }
      },
      close: () => fh.close(),
    };
  }

  /**
   * Metrics wait in a batch per version while a meta.json write is in flight, and go into the next
   * write together: one read-modify-write of meta.json per batch, not one per agent (300 agents'
   * eval reports within seconds were 300 sequential rewrites of a file that grows with every one).
   */
  recordMetrics(version: number, agent: string, metrics: EvalMetrics): Promise<void> {
    const waiting = this.metricsBatches.get(version);
    if (waiting) {
      waiting.metrics[agent] = metrics;
      return waiting.written;
    }
    const batch: { metrics: Record<string, EvalMetrics>; written: Promise<void> } = { metrics: { [agent]: metrics }, written: Promise.resolve() };
    batch.written = this.metaChain.then(async () => {
      // From here on, metrics go into the next batch: this one is being written.
      this.metricsBatches.delete(version);
      const meta = await this.get(version);
      if (!meta) return;
      Object.assign(meta.metrics, batch.metrics);
      await writeJsonAtomic(join(this.dir(version), 'meta.json'), meta);
    });
    this.metricsBatches.set(version, batch);
    this.metaChain = batch.written.catch(() => undefined);
    return batch.written;
  }
}
