import { mkdir, readdir, readFile, rename, rm, open } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ErrorCodes, FedlineError } from '../shared/errors.js';
import { fsyncDir, writeJsonAtomic } from '../shared/fs-atomic.js';
import type { EvalMetrics, ModelMeta } from '../shared/messages.js';
import { modelMetaSchema } from '../shared/messages.js';
import { decodeBundle, sha256Hex, type TensorSpec } from '../shared/tensor-bundle.js';
import type { TensorBlockReader } from '../shared/fedavg.js';

/**
 * Every global model version on disk as a TensorFlow.js layers model, so `tf.loadLayersModel`
 * (or shared/tfjs/model-io.ts loadLayersModelFromDir) opens it directly:
 *
 *   <root>/v<version>/model.json    tfjs layers model: topology + weightsManifest
 *   <root>/v<version>/weights.bin   the raw float32 weights (= the bundle payload)
 *   <root>/v<version>/header.bin    the bundle header; header.bin + weights.bin = the bundle
 *   <root>/v<version>/meta.json     SHA-256, round, contributors, metrics per agent
 *
 * A version is written into a temporary folder and renamed into place, so a crash never leaves a
 * half-written version behind.
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
  readBundle(version: number): Promise<Buffer>;
  recordMetrics(version: number, agent: string, metrics: EvalMetrics): Promise<void>;
  /** Read a version's tensors block by block from disk (no whole-model copy in memory). */
  openTensorReader(version: number): Promise<TensorBlockReader & { close(): Promise<void> }>;
  dir(version: number): string;
}

export class FsModelStore implements ModelStore {
  readonly root: string;
  /** Serialises meta.json read-modify-write cycles. */
  private metaChain: Promise<unknown> = Promise.resolve();

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
    const meta = decoded.header.meta;
    const target = this.dir(meta.version);
    if (await this.get(meta.version)) throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: version ${meta.version} exists already`);
    const stored: StoredModel = {
      version: meta.version,
      round: meta.round,
      sha256: sha256Hex(bundle),
      bytes: bundle.byteLength,
      headerBytes: decoded.payloadStart,
      createdAt: meta.createdAt,
      tensors: decoded.header.tensors,
      headTensors: meta.headTensors,
      classes: meta.classes,
      inputShape: meta.inputShape,
      contributors: extra.contributors ?? {},
      metrics: {},
      updateMetrics: extra.updateMetrics ?? {},
    };
    const modelJson = {
      format: 'layers-model',
      generatedBy: 'fedline',
      convertedBy: null,
      modelTopology: meta.topology,
      weightsManifest: [{ paths: ['weights.bin'], weights: decoded.header.tensors.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype })) }],
      userDefinedMetadata: { fedline: { version: meta.version, round: meta.round, sha256: stored.sha256, classes: meta.classes, inputShape: meta.inputShape, normalization: meta.normalization } },
    };
    await mkdir(this.root, { recursive: true });
    const tmp = join(this.root, `.v${meta.version}.${randomBytes(4).toString('hex')}.tmp`);
    await mkdir(tmp);
    try {
      await writeSynced(join(tmp, 'weights.bin'), bundle.subarray(decoded.payloadStart));
      await writeSynced(join(tmp, 'header.bin'), bundle.subarray(0, decoded.payloadStart));
      await writeSynced(join(tmp, 'model.json'), JSON.stringify(modelJson));
      await writeSynced(join(tmp, 'meta.json'), JSON.stringify(stored, null, 2));
      await fsyncDir(tmp);
      await rename(tmp, target);
      await fsyncDir(this.root);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw new FedlineError(ErrorCodes.MODEL_STORE, `model store: cannot write version ${meta.version} under ${this.root}: ${(err as Error).message}`, {}, { cause: err });
    }
    return stored;
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

  recordMetrics(version: number, agent: string, metrics: EvalMetrics): Promise<void> {
    const next = this.metaChain.then(async () => {
      const meta = await this.get(version);
      if (!meta) return;
      meta.metrics[agent] = metrics;
      await writeJsonAtomic(join(this.dir(version), 'meta.json'), meta);
    });
    this.metaChain = next.catch(() => undefined);
    return next;
  }
}

async function writeSynced(path: string, data: Uint8Array | string): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

