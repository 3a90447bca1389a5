import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { modelMetaSchema, type ModelMeta, type RoundAnnouncement } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle, type DecodedBundle } from '../shared/bundle/tensor-bundle.js';
import type { GlobalModel } from '../training/trainer.js';

type ModelRef = RoundAnnouncement['base'];

/** Checks the aggregator's signature of a model (version, SHA-256, signature); see AgentDeps.verifyModel. */
export type ModelVerifier = (version: number, sha256: string, signature: string | null) => boolean;

/** Before anything is downloaded or read from the cache: is this model the aggregator's? */
export function checkModelSignature(verify: ModelVerifier | null, ref: ModelRef): void {
  if (verify && !verify(ref.version, ref.sha256, ref.signature)) {
    throw new FedlineError(
      ErrorCodes.MODEL_SIGNATURE,
      ref.signature
        ? `model version ${ref.version} (sha256 ${ref.sha256.slice(0, 12)}…) has a signature that does not verify with the aggregator's public key; refusing it`
        : `model version ${ref.version} is not signed; refusing it (modelPublicKeyFile is set)`,
    );
  }
}

/**
 * The newest base model version this agent has verified (signature and bundle), kept in a file of
 * its state folder so that a restart remembers it. A round based on an older version is refused
 * (FL_MODEL_SIGNATURE): a genuinely signed old model, replayed, is still old. The aggregator only
 * ever moves forward (a rollback of the released model is a release decision, not an older round
 * base). A federation started afresh (versions from 0 again) needs the file removed.
 */
export class VerifiedBaseFloor {
  private highest: number | null = null;
  /** The federation run (`runId`) the floor belongs to: a new run starts again from version 0. */
  private runId: string | null = null;
  private readonly file: string | null;

  /** `file`: where to remember the run and version (null: in memory only). */
  constructor(file: string | null) {
    this.file = file;
    if (!file) return;
    try {
      const saved = JSON.parse(readFileSync(file, 'utf8')) as { version?: unknown; runId?: unknown };
      if (Number.isInteger(saved.version) && (saved.version as number) >= 0) this.highest = saved.version as number;
      if (typeof saved.runId === 'string') this.runId = saved.runId;
    } catch {
      // none yet (or unreadable: the next verified model writes it again)
    }
  }

  get version(): number | null {
    return this.highest;
  }

  /**
   * Before the download: refuse a base older than one already verified in the same run. Another
   * run (a fresh aggregator state, versions from 0 again) has its own floor: agents already ignore
   * announcements of an older run (edge-agent/run-rounds.ts), so only the current run's order counts.
   */
  check(ref: ModelRef, runId: string): void {
    if (this.highest !== null && this.runId === runId && ref.version < this.highest) {
      throw new FedlineError(
        ErrorCodes.MODEL_SIGNATURE,
        `the round's base model version ${ref.version} is older than version ${this.highest}, already verified here: a replayed old model; refusing it`,
        { version: ref.version, verified: this.highest },
      );
    }
  }

  /** The base `version` of run `runId` passed every check: remember it (atomically, in the file). */
  verified(version: number, runId: string): void {
    if (this.runId === runId && this.highest !== null && version <= this.highest) return;
    this.highest = version;
    this.runId = runId;
    if (!this.file) return;
    try {
      writeFileSync(`${this.file}.tmp`, JSON.stringify({ runId, version }) + '\n');
      renameSync(`${this.file}.tmp`, this.file);
    } catch {
      // kept in memory; the file is a best effort across restarts
    }
  }
}

/** The announced base model from its bundle; a bundle that cannot be read or names another version is refused. */
export function decodeBaseModel(bundle: Uint8Array, ref: ModelRef): GlobalModel {
  let decoded: DecodedBundle<ModelMeta>;
  try {
    decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
  } catch (err) {
    throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `global model version ${ref.version} cannot be read: ${describeError(err).message}`);
  }
  if (decoded.header.meta.version !== ref.version)
    throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `bundle says version ${decoded.header.meta.version}, announced ${ref.version}`);
  return { version: ref.version, sha256: ref.sha256, meta: decoded.header.meta, tensors: bundleTensors(decoded) };
}
