import { chunkCount } from '../shared/bundle/chunking.js';
import { describeError } from '../shared/protocol/errors.js';
import type { Command, ModelCommandVerb, ReleasedManifest } from '../shared/protocol/mes.js';
import { PROTOCOL_VERSION, type EvalMetrics } from '../shared/protocol/messages.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import type { AggregatorContext } from './aggregator-context.js';
import { ModelRegistry } from './model-registry.js';
import type { ModelPublisher } from './model-publisher.js';
import type { StoredModel } from './model-store.js';
import { addCandidate, checkGates, decide, release, rollback, type SiteReleaseMetrics, type Transition } from './release-policy.js';

/** Signs the released manifest (release sequence number, version, SHA-256); see shared/protocol/model-signature.ts signRelease. */
export type ReleaseSigner = (releaseSeq: number, version: number, sha256: string) => string;

export interface CommandOutcome {
  status: 'accepted' | 'rejected';
  detail: string;
}

/**
 * The aggregator's model release: registers every stored version as a candidate, checks a
 * candidate against the release policy when the sites have evaluated it (the round that starts
 * from it), releases it (auto) or waits for the operator (approve), carries out `release` and
 * `rollback` commands, and publishes the released version: its retained chunks stay on the broker
 * and its signed manifest is retained on `<root>/model/released` (what `fedline inspect` runs).
 * Events: model-validated, model-rejected, model-released, model-rolled-back.
 */
export class ReleaseManager {
  private readonly ctx: AggregatorContext;
  private readonly publisher: ModelPublisher;
  private readonly sign: ReleaseSigner | null;
  private readonly registry: ModelRegistry;
  /** Registry changes run one at a time (round hooks and MES commands interleave). */
  private chain: Promise<unknown> = Promise.resolve();
  private loaded = false;
  /** The version whose chunks were last kept for the release (cleared when another is released). */
  private chunksKept: number | null = null;

  constructor(ctx: AggregatorContext, publisher: ModelPublisher, sign: ReleaseSigner | null) {
    this.ctx = ctx;
    this.publisher = publisher;
    this.sign = sign;
    this.registry = new ModelRegistry(ctx.config.stateDir);
    publisher.keepChunksOf = () => this.registry.data.released;
  }

  get released(): number | null {
    return this.registry.data.released;
  }

  private serial<T>(step: () => Promise<T>): Promise<T> {
    const next = this.chain.then(step);
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Load the registry and register the stored versions; without a registry the current version (0 in a new federation) counts as released. */
  load(): Promise<void> {
    return this.serial(async () => {
      const { store, clock, log } = this.ctx;
      await this.registry.load();
      const data = this.registry.data;
      const versions = await store.versions();
      for (const v of versions) {
        const m = data.versions[v] ? null : await store.get(v);
        if (m) addCandidate(data, this.entryOf(m), clock.now());
      }
      // A new federation: version 0, the common start. A state folder from before the registry: the
      // latest version, which its lines were running (they followed model/latest then).
      const first = versions.at(-1);
      if (data.released === null && first !== undefined)
        release(
          data,
          first,
          'initial',
          first === 0 ? 'version 0, the common start, counts as released' : `the latest version when the registry was created`,
          clock.now(),
        );
      await this.registry.save();
      this.loaded = true;
      log.info({ released: data.released, releaseSeq: data.releaseSeq, mode: this.ctx.config.release.mode }, 'model registry loaded');
    });
  }

  private entryOf(m: StoredModel): { version: number; round: number; sha256: string; signature: string | null } {
    return { version: m.version, round: m.round, sha256: m.sha256, signature: this.publisher.modelRef(m).signature };
  }

  /** Publish the released version (its chunks and the retained manifest); also after a reconnect. */
  publish(): Promise<void> {
    return this.serial(() => this.publishReleased());
  }

  /** A new version was stored: a candidate. */
  onNewVersion(model: StoredModel): Promise<void> {
    return this.serial(async () => {
      addCandidate(this.registry.data, this.entryOf(model), this.ctx.clock.now());
      await this.registry.save();
    });
  }

  /** The sites evaluated `base` (the round that started from it closed): decide on it if it is a candidate. Never throws. */
  onBaseEvaluated(base: StoredModel, metrics: Readonly<Record<string, EvalMetrics>>): Promise<void> {
    return this.serial(() => this.decideOn(base, metrics)).catch((err) => {
      const { code, message } = describeError(err);
      this.ctx.log.error({ code, version: base.version }, `release decision on version ${base.version} failed: ${message}`);
    });
  }

  /** `release {version}` / `rollback {version?}` from the MES or `fedline release|rollback`. */
  command(verb: ModelCommandVerb, cmd: Command): Promise<CommandOutcome> {
    return this.serial(async () => {
      if (!this.loaded) return { status: 'rejected' as const, detail: 'the model registry is not loaded yet; try again' };
      const by = cmd.by ?? 'mes';
      const reason = cmd.reason ?? null;
      const now = this.ctx.clock.now();
      let t: Transition;
      if (verb === 'release') {
        if (cmd.version === undefined) return { status: 'rejected' as const, detail: 'release needs "version"' };
        t = (await this.ctx.store.get(cmd.version))
          ? release(this.registry.data, cmd.version, by, reason, now)
          : { ok: false, detail: `no model version ${cmd.version} in the store` };
      } else t = rollback(this.registry.data, cmd.version, by, reason, now);
      if (!t.ok) return { status: 'rejected' as const, detail: t.detail };
      await this.registry.save();
      await this.publishReleased();
      await this.announce(verb === 'release' ? 'model-released' : 'model-rolled-back', t, by, reason);
      return { status: 'accepted' as const, detail: t.detail };
    });
  }

  private async decideOn(base: StoredModel, metrics: Readonly<Record<string, EvalMetrics>>): Promise<void> {
    const { config, store, clock, log } = this.ctx;
    const data = this.registry.data;
    if (data.versions[base.version]?.stage !== 'candidate' || Object.keys(metrics).length === 0) return;
    const current = data.released !== null ? await store.get(data.released) : null;
    const report = checkGates(config.release, base.classes, metrics, current ? { version: current.version, metrics: current.metrics } : null);
    decide(data, base.version, report, clock.now());
    await this.registry.save();
    const fields = { version: base.version, round: base.round, sha256: base.sha256, against: report.against, sites: report.sites };
    if (!report.passed) {
      log.warn({ version: base.version, failures: report.failures }, `candidate version ${base.version} rejected by the release gates`);
      this.ctx.emitEvent('model-rejected', { ...fields, failures: report.failures });
      return;
    }
    log.info({ version: base.version, against: report.against, mode: config.release.mode }, `candidate version ${base.version} passed the release gates`);
    this.ctx.emitEvent('model-validated', { ...fields, mode: config.release.mode });
    if (config.release.mode !== 'auto') return;
    const t = release(data, base.version, 'policy', 'every release gate passed', clock.now());
    if (!t.ok) return;
    await this.registry.save();
    await this.publishReleased();
    await this.announce('model-released', t, 'policy', 'every release gate passed');
  }

  private async announce(type: 'model-released' | 'model-rolled-back', t: Transition & { ok: true }, by: string, reason: string | null): Promise<void> {
    const model = await this.ctx.store.get(t.version);
    if (!model) return;
    const base = { version: t.version, round: model.round, sha256: model.sha256, releaseSeq: this.registry.data.releaseSeq, by, reason };
    const sites = this.sitesOf(model);
    this.ctx.log.info({ version: t.version, previous: t.previous, by, reason }, t.detail);
    if (type === 'model-released') this.ctx.emitEvent(type, { ...base, sites, previous: t.previous });
    else this.ctx.emitEvent(type, { ...base, sites, from: t.previous! });
  }

  /** Each site's figures for a version: the gates' report when it was decided on, else its stored evaluations. */
  private sitesOf(model: StoredModel): Record<string, SiteReleaseMetrics> {
    return this.registry.data.versions[model.version]?.gates?.sites ?? checkGates(this.ctx.config.release, model.classes, model.metrics, null).sites;
  }

  private async publishReleased(): Promise<void> {
    const { store, transport, topics, config, log } = this.ctx;
    const data = this.registry.data;
    if (data.released === null) return;
    const model = await store.get(data.released);
    if (!model) {
      log.error({ version: data.released }, 'the released version is not in the model store; nothing published on model/released');
      return;
    }
    const latest = (await store.versions()).at(-1);
    // The latest version's chunks are retained anyway; an older released one's are published again (they may have been cleared).
    if (model.version !== latest) await this.publisher.publishChunksOf(model);
    const manifest: ReleasedManifest = {
      v: PROTOCOL_VERSION,
      federation: config.federation,
      version: model.version,
      round: model.round,
      sha256: model.sha256,
      bytes: model.bytes,
      chunks: chunkCount(model.bytes, config.chunkBytes),
      chunkBytes: config.chunkBytes,
      createdAt: model.createdAt,
      stage: 'released',
      releaseSeq: data.releaseSeq,
      releasedAt: data.releasedAt ?? this.ctx.clock.now(),
      by: data.releasedBy ?? 'initial',
      sites: this.sitesOf(model),
      signature: this.sign ? this.sign(data.releaseSeq, model.version, model.sha256) : null,
    };
    await transport.publish(topics.modelReleased(), encodeJson(manifest), { qos: 1, retain: true });
    const before = this.chunksKept;
    this.chunksKept = model.version;
    if (before !== null && before !== model.version && before !== latest) await this.publisher.clearChunksOf(before);
    log.info({ version: model.version, releaseSeq: data.releaseSeq }, 'released model published');
  }
}
