import { EventEmitter } from 'node:events';
import { mkdir, readFile, rename } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { decodeJson, encodeJson } from '../shared/protocol/wire-codec.js';
import { Counters } from '../shared/util/counters.js';
import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { PROTOCOL_VERSION, SUPPORTED_VERSIONS } from '../shared/protocol/messages.js';
import { releasedManifestSchema, type ReleasedManifest } from '../shared/protocol/mes.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { InboundMessage, Transport } from '../shared/transport/transport.js';
import { FolderWatcher } from './folder-watcher.js';
import type { ModelCache } from './model-cache.js';
import { downloadModel } from './model-downlink.js';
import type { Classifier } from '../training/tfjs-classifier.js';

export type ImageSource = { kind: 'file'; path: string } | { kind: 'mqtt'; topic: string; imageId: string | null };

/** The JSON published for every image (docs/topics.md, shared/protocol/mes.ts verdictSchema). */
export interface Verdict {
  v: number;
  type: 'verdict';
  station: string;
  agent: string;
  source: ImageSource;
  /** The predicted class, or null when the image could not be classified (see `error`). */
  class: string | null;
  classIndex: number | null;
  /** Probability of the predicted class, 0..1. */
  confidence: number | null;
  probabilities: Record<string, number> | null;
  modelVersion: number | null;
  modelSha256: string | null;
  error: string | null;
  receivedAt: number;
  ts: number;
}

export interface InspectionOptions {
  agentId: string;
  station: string;
  transport: Transport;
  topics: Topics;
  cache: ModelCache;
  /** Builds a classifier from a global model bundle (tfjs in production). */
  classifierFor: (bundle: Buffer) => Promise<Classifier>;
  verdictTopic: string;
  /** Images over MQTT: raw bytes on `topic` or `topic/<imageId>`. */
  imagesTopic?: string;
  watch?: { dir: string; archiveDir?: string; settleMs: number; rescanMs: number };
  maxModelBytes: number;
  maxQueuedImages: number;
  log: Logger;
  /** Checks the aggregator's signature of the released manifest (release sequence number, version, SHA-256); absent: not checked. */
  verifyRelease?: (releaseSeq: number, version: number, sha256: string, signature: string | null) => boolean;
  /** Run this version only (config `pinnedModel`): from the model cache, or downloaded when it is the released one. */
  pinned?: { version: number; sha256: string };
}

interface QueuedImage {
  source: ImageSource;
  /** MQTT images carry their bytes; files are read when their turn comes. */
  bytes: Buffer | null;
  receivedAt: number;
}

/**
 * The inspection service: classifies every new image (folder and/or MQTT) with the released
 * global model and publishes a verdict. It follows `<root>/model/released` (the retained, signed
 * manifest of the version the lines run; never `model/latest`, so a candidate never runs),
 * downloads each newly released version (newer after a release, older after a rollback) from its
 * retained chunks in the background while the current model keeps classifying, and swaps between
 * two images: no image is dropped or held back by an update, and every verdict names the model
 * version that produced it. A pinned service runs its one version and never switches. Images that
 * come before the first model wait in the queue.
 *
 * Events: `verdict` (Verdict), `model` (Classifier now in use).
 */
export class InspectionService extends EventEmitter {
  readonly counters = new Counters();
  private readonly o: InspectionOptions;
  private readonly log: Logger;
  private current: Classifier | null = null;
  private next: Classifier | null = null;
  private readonly queue: QueuedImage[] = [];
  private wake: (() => void) | null = null;
  private loop: Promise<void> = Promise.resolve();
  private watcher: FolderWatcher | null = null;
  private stopped = false;
  /** The release to switch to (being fetched), and the one whose classifier waits in `next`. */
  private wanted: ReleasedManifest | null = null;
  private nextRelease: ReleasedManifest | null = null;
  /** The highest release sequence number seen: an older release replayed is refused. */
  private releaseSeq = -1;
  private pinNoted = -1;
  private fetching = false;
  private fetchAbort = new AbortController();

  constructor(o: InspectionOptions) {
    super();
    this.o = o;
    this.log = o.log.child({ module: 'inspect', station: o.station });
  }

  get modelVersion(): number | null {
    return (this.next ?? this.current)?.version ?? null;
  }

  get queued(): number {
    return this.queue.length;
  }

  async start(): Promise<void> {
    this.loop = this.run();
    if (this.o.pinned) await this.loadPinnedFromCache(this.o.pinned);
    await this.o.transport.subscribe(this.o.topics.modelReleased(), this.onManifest);
    if (this.o.imagesTopic) {
      // "a/#" matches "a" itself and "a/<imageId>" (MQTT 3.1.1 §4.7.1.2).
      await this.o.transport.subscribe(`${this.o.imagesTopic}/#`, this.onImageMessage);
    }
    if (this.o.watch) {
      await mkdir(this.o.watch.dir, { recursive: true });
      if (this.o.watch.archiveDir) await mkdir(this.o.watch.archiveDir, { recursive: true });
      this.watcher = new FolderWatcher({
        ...this.o.watch,
        includeExisting: true,
        log: this.log,
        onFile: (path) => this.enqueue({ source: { kind: 'file', path }, bytes: null, receivedAt: Date.now() }),
      });
      await this.watcher.start();
    }
    this.log.info(
      { watch: this.o.watch?.dir ?? null, imagesTopic: this.o.imagesTopic ?? null, verdictTopic: this.o.verdictTopic },
      this.o.pinned
        ? `inspection service started; pinned to model version ${this.o.pinned.version}`
        : 'inspection service started; following the released model',
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.fetchAbort.abort();
    await this.watcher?.stop();
    await this.o.transport.unsubscribe(this.o.topics.modelReleased(), this.onManifest).catch(() => undefined);
    if (this.o.imagesTopic) await this.o.transport.unsubscribe(`${this.o.imagesTopic}/#`, this.onImageMessage).catch(() => undefined);
    this.wake?.();
    await this.loop;
    this.current?.dispose();
    this.next?.dispose();
  }

  private enqueue(item: QueuedImage): void {
    if (this.stopped) return;
    if (this.queue.length >= this.o.maxQueuedImages) {
      this.counters.inc(ErrorCodes.MSG_OVERSIZE);
      this.log.error({ queued: this.queue.length, source: item.source }, 'image queue full; image refused');
      this.publish(this.verdict(item, null, `refused: ${this.queue.length} images already waiting (maxQueuedImages)`));
      return;
    }
    this.queue.push(item);
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private readonly onImageMessage = (m: InboundMessage): void => {
    if (m.retain || m.payload.byteLength === 0) return; // an image is classified once, not at every reconnect
    const rest = m.topic.slice(this.o.imagesTopic!.length + 1);
    this.enqueue({ source: { kind: 'mqtt', topic: m.topic, imageId: rest && !rest.includes('/') ? rest : null }, bytes: m.payload, receivedAt: Date.now() });
  };

  private readonly onManifest = (m: InboundMessage): void => {
    if (m.payload.byteLength === 0) return;
    let manifest: ReleasedManifest;
    try {
      manifest = decodeJson(m.payload, releasedManifestSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'released model manifest' });
    } catch (err) {
      const { code, message } = describeError(err);
      this.counters.inc(code);
      this.log.warn({ topic: m.topic, code }, message);
      return;
    }
    const { version, sha256, releaseSeq, signature } = manifest;
    if (this.o.verifyRelease && !this.o.verifyRelease(releaseSeq, version, sha256, signature)) {
      // Only the aggregator's key makes a release: keep classifying with the current model.
      this.counters.inc(ErrorCodes.MODEL_SIGNATURE);
      this.log.warn(
        { topic: m.topic, code: ErrorCodes.MODEL_SIGNATURE, version, releaseSeq },
        `release of model version ${version} is ${signature ? 'signed with another key' : 'not signed'}; refusing it`,
      );
      return;
    }
    if (releaseSeq < this.releaseSeq) {
      this.counters.inc(ErrorCodes.MODEL_SIGNATURE);
      this.log.warn({ code: ErrorCodes.MODEL_SIGNATURE, version, releaseSeq, seen: this.releaseSeq }, 'an older release replayed; refusing it');
      return;
    }
    this.releaseSeq = releaseSeq;
    const pin = this.o.pinned;
    if (pin && (version !== pin.version || sha256 !== pin.sha256)) {
      if (this.pinNoted !== releaseSeq)
        this.log.info({ pinned: pin.version, released: version, releaseSeq }, `pinned to model version ${pin.version}; not switching`);
      this.pinNoted = releaseSeq;
      return;
    }
    if (version === this.modelVersion) {
      this.wanted = null; // a release of the version in use (a rollback during a download): nothing to switch to
      return;
    }
    if (version === this.wanted?.version) return;
    this.wanted = manifest;
    this.log.info({ version, releaseSeq, bytes: manifest.bytes, previous: this.modelVersion }, `model version ${version} released`);
    if (!this.fetching) this.fetchLoop().catch((err: Error) => this.log.error({ err: err.message }, 'model update loop failed'));
  };

  /** A pinned version found in the model cache runs at once (it may no longer be on the broker). */
  private async loadPinnedFromCache(pin: { version: number; sha256: string }): Promise<void> {
    const bundle = await this.o.cache.get(pin.version, pin.sha256);
    if (!bundle) {
      this.log.info({ pinned: pin.version }, `pinned model version ${pin.version} is not cached; waiting for it to be released`);
      return;
    }
    this.setNext(await this.o.classifierFor(bundle), null);
  }

  private setNext(classifier: Classifier, release: ReleasedManifest | null): void {
    // Swapped in by the classification loop between two images.
    this.next?.dispose();
    this.next = classifier;
    this.nextRelease = release;
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Fetch the wanted release, again while another one is announced. */
  private async fetchLoop(): Promise<void> {
    this.fetching = true;
    try {
      while (!this.stopped && this.wanted && this.wanted.version !== this.modelVersion) {
        const target = this.wanted;
        try {
          const classifier = await this.fetch(target);
          if (this.stopped || this.wanted !== target) {
            // Stopped, or another release (a rollback) came while this one downloaded.
            classifier.dispose();
            continue;
          }
          this.setNext(classifier, target);
          this.log.info({ version: classifier.version }, 'released model ready; switching at the next image');
        } catch (err) {
          if (this.stopped) return;
          const { code, message } = describeError(err);
          this.counters.inc(code);
          this.log.error(
            { code, version: target.version },
            `could not load model version ${target.version}: ${message}; keeping version ${this.modelVersion ?? 'none'}`,
          );
          if (this.wanted === target) {
            // Try again after a pause, unless another release shows up meanwhile.
            await new Promise((r) => setTimeout(r, 5000).unref());
          }
        }
      }
    } finally {
      this.fetching = false;
    }
  }

  private async fetch(manifest: ReleasedManifest): Promise<Classifier> {
    let bundle = await this.o.cache.get(manifest.version, manifest.sha256);
    if (!bundle) {
      const { version, sha256, bytes, chunks, chunkBytes } = manifest;
      bundle = await downloadModel(this.o.transport, this.o.topics, { version, sha256, bytes, chunks, chunkBytes, signature: null }, this.log, {
        maxModelBytes: this.o.maxModelBytes,
        stallMs: 30_000,
        signal: this.fetchAbort.signal,
      });
      await this.o.cache.put(manifest.version, manifest.sha256, bundle).catch((err: Error) => this.log.warn({ err: err.message }, 'could not cache the model'));
    }
    const classifier = await this.o.classifierFor(bundle);
    if (classifier.sha256 !== manifest.sha256 || classifier.version !== manifest.version) {
      classifier.dispose();
      throw new FedlineError(
        ErrorCodes.MODEL_STORE,
        `the bundle of version ${manifest.version} is version ${classifier.version} (${classifier.sha256.slice(0, 12)})`,
      );
    }
    return classifier;
  }

  private async run(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      if (this.next) {
        const old = this.current;
        const release = this.nextRelease;
        this.current = this.next;
        this.next = null;
        this.nextRelease = null;
        old?.dispose();
        this.log.info(
          {
            version: this.current.version,
            sha256: this.current.sha256,
            previous: old?.version ?? null,
            releaseSeq: release?.releaseSeq ?? null,
            sites: release?.sites ?? null,
          },
          `classifying with model version ${this.current.version}${this.o.pinned ? ' (pinned)' : ''}`,
        );
        this.emit('model', this.current);
      }
      const item = this.current ? this.queue.shift() : undefined;
      if (!item) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      await this.classify(item, this.current!);
    }
  }

  private async classify(item: QueuedImage, model: Classifier): Promise<void> {
    const name = item.source.kind === 'file' ? item.source.path : item.source.topic;
    let verdict: Verdict;
    try {
      const bytes = item.bytes ?? (await readFile(item.source.kind === 'file' ? item.source.path : ''));
      const c = model.classify(bytes, name);
      verdict = this.verdict(item, { model, ...c }, null);
    } catch (err) {
      const { message } = describeError(err);
      this.counters.inc(ErrorCodes.DATA);
      this.log.warn({ source: item.source, code: ErrorCodes.DATA }, `image not classified: ${message}`);
      verdict = this.verdict(item, null, message);
    }
    this.publish(verdict);
    if (item.source.kind === 'file' && this.o.watch?.archiveDir) {
      const path = item.source.path;
      await rename(path, join(this.o.watch.archiveDir, basename(path)))
        .then(() => this.watcher?.forget(basename(path)))
        .catch((err: Error) => this.log.warn({ path, err: err.message }, 'could not move the image to the archive'));
    }
  }

  private verdict(item: QueuedImage, r: { model: Classifier; classIndex: number; probabilities: number[] } | null, error: string | null): Verdict {
    return {
      v: PROTOCOL_VERSION,
      type: 'verdict',
      station: this.o.station,
      agent: this.o.agentId,
      source: item.source,
      class: r ? r.model.classes[r.classIndex]! : null,
      classIndex: r ? r.classIndex : null,
      confidence: r ? r.probabilities[r.classIndex]! : null,
      probabilities: r ? Object.fromEntries(r.model.classes.map((c, i) => [c, r.probabilities[i]!])) : null,
      modelVersion: r ? r.model.version : null,
      modelSha256: r ? r.model.sha256 : null,
      error,
      receivedAt: item.receivedAt,
      ts: Date.now(),
    };
  }

  private publish(v: Verdict): void {
    this.emit('verdict', v);
    // One line per verdict, for a station without an MQTT subscriber (journald, Loki).
    const source = v.source.kind === 'file' ? v.source.path : v.source.imageId ? `${v.source.topic}/${v.source.imageId}` : v.source.topic;
    if (v.error === null)
      this.log.info({ source, class: v.class, confidence: Number(v.confidence!.toFixed(4)), modelVersion: v.modelVersion }, `verdict: ${v.class}`);
    else this.log.info({ source, class: null, error: v.error, modelVersion: v.modelVersion }, 'verdict: not classified');
    this.o.transport.publish(this.o.verdictTopic, encodeJson(v), { qos: 1 }).catch((err: Error) => {
      this.counters.inc(ErrorCodes.TRANSPORT);
      this.log.warn({ err: err.message, source: v.source }, 'could not publish a verdict');
    });
  }
}
