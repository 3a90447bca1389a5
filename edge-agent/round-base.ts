import { join } from 'node:path';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { ModelMeta, RoundAnnouncement } from '../shared/protocol/messages.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { Transport } from '../shared/transport/transport.js';
import type { Logger } from '../shared/util/logger.js';
import type { GlobalModel, Trainer } from '../training/trainer.js';
import { checkModelSignature, decodeBaseModel, VerifiedBaseFloor, type ModelVerifier } from './base-model.js';
import type { ModelCache } from './model-cache.js';
import { fetchModelBundle } from './model-fetch.js';

export interface RoundBaseDeps {
  transport: Transport;
  topics: Topics;
  cache: ModelCache;
  /** Prepares the local trainer once the federation's classes and input shape are known. */
  trainerFor: (model: ModelMeta) => Promise<Trainer>;
  /** Checks the aggregator's signature of a model; null: models are not checked. */
  verifyModel: ModelVerifier | null;
  /** The agent's state folder (the verified-base floor is kept there); null: in memory only. */
  stateDir: string | null;
  maxModelBytes: number;
  log: Logger;
}

export interface FetchHooks {
  signal: AbortSignal;
  onProgress: (have: number, total: number) => void;
  onReject: (err: unknown, topic: string) => void;
  onStorageProblem: (message: string) => void;
}

/**
 * What a round starts from on the agent: the announced base model, checked (signature, no replay of
 * an older verified base), fetched into the cache and decoded; and the local trainer, made once the
 * federation's classes are known and refused when a later round's classes differ.
 */
export class RoundBase {
  private readonly deps: RoundBaseDeps;
  /** With signatures on: the newest verified base; older rounds are replays. */
  private readonly baseFloor: VerifiedBaseFloor | null;
  private trainerMade: Trainer | null = null;

  constructor(deps: RoundBaseDeps) {
    this.deps = deps;
    this.baseFloor = deps.verifyModel ? new VerifiedBaseFloor(deps.stateDir ? join(deps.stateDir, 'verified-base.json') : null) : null;
  }

  /** The local trainer, if one was made. */
  get trainer(): Trainer | null {
    return this.trainerMade;
  }

  async fetchModel(ann: RoundAnnouncement, hooks: FetchHooks): Promise<{ model: GlobalModel; downloadedBytes: number }> {
    const ref = ann.base;
    checkModelSignature(this.deps.verifyModel, ref);
    this.baseFloor?.check(ref, ann.runId);
    // Downloaded straight into the cache (checked as it arrives), then read once for training.
    const { bundle, downloadedBytes } = await fetchModelBundle(this.deps.transport, this.deps.topics, this.deps.cache, ref, this.deps.log, {
      maxModelBytes: this.deps.maxModelBytes,
      stallMs: 30_000,
      ...hooks,
    });
    const model = decodeBaseModel(bundle, ref);
    this.baseFloor?.verified(ref.version, ann.runId);
    return { model, downloadedBytes };
  }

  /** The trainer for this model; `made` is true when it was made by this call (the agent then reports its backend). */
  async trainerFor(meta: ModelMeta, ann: RoundAnnouncement): Promise<{ trainer: Trainer; made: boolean }> {
    if (meta.classes.join('\n') !== ann.classes.join('\n')) {
      throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `model classes [${meta.classes.join(', ')}] differ from the round's [${ann.classes.join(', ')}]`);
    }
    if (this.trainerMade) return { trainer: this.trainerMade, made: false };
    this.trainerMade = await this.deps.trainerFor(meta);
    return { trainer: this.trainerMade, made: true };
  }
}
