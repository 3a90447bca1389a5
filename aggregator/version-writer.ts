import { rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash, type Hash } from 'node:crypto';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { fsyncDir, stateJson, writeFileSynced } from '../shared/util/fs-atomic.js';
import type { ModelMeta } from '../shared/protocol/messages.js';
import type { TensorSpec } from '../shared/bundle/tensor-bundle.js';
import type { StoredModel } from './model-store.js';

/**
 * A new global model version being written: the payload (float32 weights in manifest order) comes
 * in order through write(), in pieces of any size; the SHA-256 of the whole bundle is computed on
 * the way and the data flushed to disk in the background, so commit() only has the tail to sync.
 */
export class VersionWriter {
  readonly specs: readonly TensorSpec[];
  readonly payloadBytes: number;
  private readonly o: {
    root: string;
    tmp: string;
    target: string;
    meta: ModelMeta;
    specs: TensorSpec[];
    prefix: Buffer;
    payloadBytes: number;
    weights: FileHandle;
    extra: Pick<Partial<StoredModel>, 'contributors' | 'updateMetrics'>;
  };
  private readonly hash: Hash;
  private written = 0;
  private unsynced = 0;
  private syncing: Promise<void> | null = null;
  private closed = false;

  constructor(o: VersionWriter['o']) {
    this.o = o;
    this.specs = o.specs;
    this.payloadBytes = o.payloadBytes;
    this.hash = createHash('sha256').update(o.prefix);
  }

  /** Payload bytes written so far (the offset of the next write). */
  get position(): number {
    return this.written;
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.closed) throw new FedlineError(ErrorCodes.MODEL_STORE, 'version writer is closed');
    if (this.written + bytes.byteLength > this.payloadBytes)
      throw new FedlineError(
        ErrorCodes.MODEL_STORE,
        `model version ${this.o.meta.version}: ${this.written + bytes.byteLength} payload bytes written, ${this.payloadBytes} expected`,
      );
    this.hash.update(bytes);
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesWritten } = await this.o.weights.write(bytes, done, bytes.byteLength - done, this.written + done);
      done += bytesWritten;
    }
    this.written += bytes.byteLength;
    this.unsynced += bytes.byteLength;
    if (this.unsynced >= 64 * 1024 * 1024 && !this.syncing) {
      this.unsynced = 0;
      this.syncing = this.o.weights
        .datasync()
        .catch(() => undefined)
        .finally(() => (this.syncing = null));
    }
  }

  /**
   * Finish the version: every payload byte must have been written. `extra` replaces what
   * createVersion was given (an aggregation knows whose updates went in only once it is done).
   */
  async commit(extra: Pick<Partial<StoredModel>, 'contributors' | 'updateMetrics'> = this.o.extra): Promise<StoredModel> {
    const { meta, specs, prefix, tmp, target, root } = this.o;
    try {
      if (this.written !== this.payloadBytes) throw new FedlineError(ErrorCodes.MODEL_STORE, `${this.written} of ${this.payloadBytes} payload bytes written`);
      await this.syncing;
      await this.o.weights.sync();
      await this.o.weights.close();
      this.closed = true;
      const stored: StoredModel = {
        version: meta.version,
        round: meta.round,
        sha256: this.hash.digest('hex'),
        bytes: prefix.byteLength + this.payloadBytes,
        headerBytes: prefix.byteLength,
        createdAt: meta.createdAt,
        tensors: specs,
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
        weightsManifest: [{ paths: ['weights.bin'], weights: specs.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype })) }],
        userDefinedMetadata: {
          fedline: {
            version: meta.version,
            round: meta.round,
            sha256: stored.sha256,
            classes: meta.classes,
            inputShape: meta.inputShape,
            normalization: meta.normalization,
          },
        },
      };
      await writeFileSynced(join(tmp, 'header.bin'), prefix);
      await writeFileSynced(join(tmp, 'model.json'), JSON.stringify(modelJson));
      await writeFileSynced(join(tmp, 'meta.json'), stateJson(stored));
      await fsyncDir(tmp);
      await rename(tmp, target);
      await fsyncDir(root);
      return stored;
    } catch (err) {
      await this.abort();
      throw new FedlineError(
        ErrorCodes.MODEL_STORE,
        `model store: cannot write version ${meta.version} under ${root}: ${(err as Error).message}`,
        {},
        { cause: err },
      );
    }
  }

  /** Give up: nothing of this version stays on disk. */
  async abort(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.syncing;
      await this.o.weights.close().catch(() => undefined);
    }
    await rm(this.o.tmp, { recursive: true, force: true });
  }
}
