import { EventEmitter } from 'node:events';
import { mkdir, readFile, rename } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { decodeJson, encodeJson } from '../shared/protocol/wire-codec.js';
import { Counters } from '../shared/util/counters.js';
import { describeError, ErrorCodes } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { modelManifestSchema, PROTOCOL_VERSION, SUPPORTED_VERSIONS, type ModelManifest } from '../shared/protocol/messages.js';
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
  /** Checks the aggregator's signature of a model (version, SHA-256); absent: models are not checked. */
  verifyModel?: (version: number, sha256: string, signature: string | null) => boolean;
}

interface QueuedImage {
  source: ImageSource;
  /** MQTT images carry their bytes; files are read when their turn comes. */
  bytes: Buffer | null;
  receivedAt: number;
}

/**
 * The inspection service: classifies every new image (folder and/or MQTT) with the latest
 * global model and publishes a verdict. It follows `<root>/model/latest` (retained manifest),
 * downloads each new version from its retained chunks in the background while the current model
 * keeps classifying, and swaps between two images: no image is dropped or held back by an update,
 * and every verdict names the model version that produced it. Images that come before the first
 * model wait in the queue.
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
  /** The newest manifest seen and the version being fetched. */
  private wanted: ModelManifest | null = null;
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
    await this.o.transport.subscribe(this.o.topics.modelLatest(), this.onManifest);
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
      'inspection service started; waiting for the global model',
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.fetchAbort.abort();
    await this.watcher?.stop();
    await this.o.transport.unsubscribe(this.o.topics.modelLatest(), this.onManifest).catch(() => undefined);
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
    let manifest: ModelManifest;
    try {
      manifest = decodeJson(m.payload, modelManifestSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'model manifest' });
    } catch (err) {
      const { code, message } = describeError(err);
      this.counters.inc(code);
      this.log.warn({ topic: m.topic, code }, message);
      return;
    }
    if (this.o.verifyModel && !this.o.verifyModel(manifest.version, manifest.sha256, manifest.signature)) {
      // A model nobody but the aggregator may publish: keep classifying with the current one.
      this.counters.inc(ErrorCodes.MODEL_SIGNATURE);
      this.log.warn(
        { topic: m.topic, code: ErrorCodes.MODEL_SIGNATURE, version: manifest.version },
        `model version ${manifest.version} is ${manifest.signature ? 'signed with another key' : 'not signed'}; refusing it`,
      );
      return;
    }
    const have = this.modelVersion ?? -1;
    if (manifest.version <= have || (this.wanted && manifest.version <= this.wanted.version)) return;
    this.wanted = manifest;
    this.log.info({ version: manifest.version, bytes: manifest.bytes }, 'new global model announced');
    if (!this.fetching) this.fetchLoop().catch((err: Error) => this.log.error({ err: err.message }, 'model update loop failed'));
  };

  /** Fetch the newest wanted model, again and again while newer ones are announced. */
  private async fetchLoop(): Promise<void> {
    this.fetching = true;
    try {
      while (!this.stopped && this.wanted && this.wanted.version > (this.modelVersion ?? -1)) {
        const target = this.wanted;
        try {
          const classifier = await this.fetch(target);
          if (this.stopped) {
            classifier.dispose();
            return;
          }
          // Swapped in by the classification loop between two images.
          this.next?.dispose();
          this.next = classifier;
          this.log.info({ version: classifier.version }, 'global model ready; switching at the next image');
          const w = this.wake;
          this.wake = null;
          w?.();
        } catch (err) {
          if (this.stopped) return;
          const { code, message } = describeError(err);
          this.counters.inc(code);
          this.log.error(
            { code, version: target.version },
            `could not load global model version ${target.version}: ${message}; keeping version ${this.modelVersion ?? 'none'}`,
          );
          if (this.wanted === target) {
            // Try again after a pause, unless a newer version shows up meanwhile.
            await new Promise((r) => setTimeout(r, 5000).unref());
          }
        }
      }
    } finally {
      this.fetching = false;
    }
  }

  private async fetch(manifest: ModelManifest): Promise<Classifier> {
    let bundle = await this.o.cache.get(manifest.version, manifest.sha256);
    if (!bundle) {
      bundle = await downloadModel(this.o.transport, this.o.topics, manifest, this.log, {
        maxModelBytes: this.o.maxModelBytes,
        stallMs: 30_000,
        signal: this.fetchAbort.signal,
      });
      await this.o.cache.put(manifest.version, manifest.sha256, bundle).catch((err: Error) => this.log.warn({ err: err.message }, 'could not cache the model'));
    }
    return this.o.classifierFor(bundle);
  }

  private async run(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      if (this.next) {
        const old = this.current;
        this.current = this.next;
        this.next = null;
        old?.dispose();
        this.log.info({ version: this.current.version, previous: old?.version ?? null }, 'classifying with the new global model');
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
