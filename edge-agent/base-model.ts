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
