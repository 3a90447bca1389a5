import { chunkCount } from '../shared/bundle/chunking.js';
import { publishChunks } from '../shared/bundle/chunk-publisher.js';
import { describeError } from '../shared/protocol/errors.js';
import { PROTOCOL_VERSION, type ControlMeta, type ModelManifest, type RoundAnnouncement } from '../shared/protocol/messages.js';
import { encodeBundle, sha256Hex, type TensorSpec } from '../shared/bundle/tensor-bundle.js';
import type { ControlVariate } from './strategy.js';
import { encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import type { AggregatorContext } from './aggregator-context.js';
import type { StoredModel } from './model-store.js';

export type ModelSigner = (version: number, sha256: string) => string;

/**
 * What the agents read retained from the broker: the global model (chunks and the manifest on
 * `model/latest`) and the round announcement. Old versions' retained chunks are cleared; after a
 * reconnect everything is published again.
 */
export class ModelPublisher {
  private readonly ctx: AggregatorContext;
  private readonly signModel: ModelSigner | null;
  /** The federation run's identity (the journal's, once loaded). */
  private readonly runId: () => string;
  private lastAnnouncement: RoundAnnouncement | null = null;
  /** SCAFFOLD's variate as last published (republished after a reconnect, cleared when the next one goes out). */
  private lastControl: { bundle: Buffer; ref: NonNullable<RoundAnnouncement['control']> } | null = null;

  constructor(ctx: AggregatorContext, signModel: ModelSigner | null, runId: () => string) {
    this.ctx = ctx;
    this.signModel = signModel;
    this.runId = runId;
  }

  /** A version besides the latest whose retained chunks stay on the broker: the released one (aggregator/release-manager.ts). */
  keepChunksOf: () => number | null = () => null;

  /** Publish a model version (chunks, then the manifest), clear older versions' chunks; `announce`: tell the MES (model-published). */
  async publishModel(model: StoredModel, announce = true): Promise<void> {
    const { transport, topics, store, clock, log } = this.ctx;
    const started = clock.now();
    await this.publishChunksOf(model);
    const manifest = this.manifest(model);
    await transport.publish(topics.modelLatest(), encodeJson(manifest), { qos: 1, retain: true });
    await this.clearOlderThan(model.version);
    log.info({ version: model.version, bytes: model.bytes, ms: clock.now() - started }, 'global model published');
    if (!announce) return;
    this.ctx.emitEvent('model-published', {
      version: model.version,
      round: model.round,
      sha256: model.sha256,
      bytes: model.bytes,
      chunks: manifest.chunks,
      contributors: model.contributors,
      metrics: model.updateMetrics,
      modelDir: store.dir(model.version),
    });
  }

  /** A version's retained chunks, read from the store's files as they go out: no in-memory copy of the model. */
  async publishChunksOf(model: StoredModel): Promise<void> {
    const { transport, topics, config, store } = this.ctx;
    const bundle = await store.openBundle(model.version);
    const { chunkBytes, maxInflight } = config;
    try {
      await publishChunks(
        transport,
        bundle,
        (seq) => topics.modelChunk(model.version, seq),
        (chunk) => ({ v: PROTOCOL_VERSION, type: 'model-chunk', version: model.version, sha256: model.sha256, ...chunk }),
        { chunkBytes, maxInflight, retain: true },
      );
    } finally {
      await bundle.close();
    }
  }

  /**
   * SCAFFOLD's server variate c for a round based on model `variate.version`: a tensor bundle
   * (float32, the model's shapes, meta { kind: 'control', version }) in retained chunks on
   * `<root>/model/<version>/control/<seq>`, the previous one's chunks cleared. Held in memory while
   * it is published (one float32 per federated weight). Returns the announcement's `control`.
   */
  async publishControl(variate: ControlVariate, specs: readonly Pick<TensorSpec, 'name' | 'shape'>[]): Promise<NonNullable<RoundAnnouncement['control']>> {
    if (this.lastControl?.ref.version === variate.version) return this.lastControl.ref;
    const tensors = specs.map((s) => ({ name: s.name, shape: [...s.shape], dtype: 'float32' as const, data: variate.tensors.get(s.name)! }));
    const meta: ControlMeta = { kind: 'control', version: variate.version };
    const bundle = encodeBundle(tensors, meta);
    const { chunkBytes } = this.ctx.config;
    const ref = {
      version: variate.version,
      sha256: sha256Hex(bundle),
      bytes: bundle.byteLength,
      chunks: chunkCount(bundle.byteLength, chunkBytes),
      chunkBytes,
    };
    const previous = this.lastControl;
    this.lastControl = { bundle, ref };
    await this.publishControlChunks();
    if (previous) {
      const { transport, topics } = this.ctx;
      for (let seq = 0; seq < previous.ref.chunks; seq++)
        await transport.publish(topics.controlChunk(previous.ref.version, seq), Buffer.alloc(0), { qos: 1, retain: true });
    }
    this.ctx.log.info({ version: ref.version, bytes: ref.bytes }, 'SCAFFOLD control variate published');
    return ref;
  }

  private async publishControlChunks(): Promise<void> {
    if (!this.lastControl) return;
    const { transport, topics, config } = this.ctx;
    const { bundle, ref } = this.lastControl;
    await publishChunks(
      transport,
      bundle,
      (seq) => topics.controlChunk(ref.version, seq),
      (chunk) => ({ v: PROTOCOL_VERSION, type: 'control-chunk', version: ref.version, sha256: ref.sha256, ...chunk }),
      { chunkBytes: config.chunkBytes, maxInflight: config.maxInflight, retain: true },
    );
  }

  /** Publish a round announcement (retained): agents joining later read it. */
  async announce(a: RoundAnnouncement): Promise<void> {
    this.lastAnnouncement = a;
    await this.ctx.transport.publish(this.ctx.topics.round(), packMsg(a), { qos: 1, retain: true });
  }

  /**
   * After a reconnect the broker may have lost its retained messages (an embedded broker without
   * persistence restarted, a Mosquitto killed before its autosave): publish the round announcement
   * and the current global model again, so that agents joining or restarting now find them.
   */
  async republishRetained(global: StoredModel | null): Promise<void> {
    const { transport, topics, log } = this.ctx;
    log.info({ round: this.lastAnnouncement?.round ?? null, version: global?.version ?? null }, 'reconnected; publishing retained state again');
    try {
      if (this.lastAnnouncement) await transport.publish(topics.round(), packMsg(this.lastAnnouncement), { qos: 1, retain: true });
      if (global) await this.publishModel(global, false);
      await this.publishControlChunks();
    } catch (err) {
      log.warn({ err: describeError(err).message }, 'could not republish retained state; will try at the next reconnect');
    }
  }

  /** How a round announcement names a model version (signed when a signing key is configured). */
  modelRef(model: StoredModel): RoundAnnouncement['base'] {
    const { chunkBytes } = this.ctx.config;
    return {
      version: model.version,
      sha256: model.sha256,
      bytes: model.bytes,
      chunks: chunkCount(model.bytes, chunkBytes),
      chunkBytes,
      signature: this.signModel ? this.signModel(model.version, model.sha256) : null,
    };
  }

  private manifest(model: StoredModel): ModelManifest {
    const { federation, chunkBytes } = this.ctx.config;
    return {
      v: PROTOCOL_VERSION,
      federation,
      runId: this.runId(),
      version: model.version,
      round: model.round,
      sha256: model.sha256,
      bytes: model.bytes,
      chunks: chunkCount(model.bytes, chunkBytes),
      chunkBytes,
      createdAt: model.createdAt,
      signature: this.signModel ? this.signModel(model.version, model.sha256) : null,
      metrics: { contributors: model.contributors, updateMetrics: model.updateMetrics },
    };
  }

  /** Old versions' retained chunks are cleared (an empty retained payload deletes it, MQTT 3.1.1 §3.3.1.3). */
  private async clearOlderThan(version: number): Promise<void> {
    const keep = this.keepChunksOf();
    for (const v of await this.ctx.store.versions()) if (v < version && v !== keep) await this.clearChunksOf(v);
  }

  /** Delete a version's retained chunks. */
  async clearChunksOf(version: number): Promise<void> {
    const { transport, topics, store, config } = this.ctx;
    const old = await store.get(version);
    if (!old) return;
    const n = chunkCount(old.bytes, config.chunkBytes);
    for (let seq = 0; seq < n; seq++) await transport.publish(topics.modelChunk(version, seq), Buffer.alloc(0), { qos: 1, retain: true });
  }
}
