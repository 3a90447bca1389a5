import { decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { modelMetaSchema, type ModelMeta } from '../shared/protocol/messages.js';
import type { AggregatorContext } from './aggregator-context.js';
import type { StoredModel } from './model-store.js';

/**
 * The global model to start from: the store's latest version (checked against its SHA-256), or,
 * in an empty store, version 0 built by `initialModel` (the only step that needs TensorFlow.js,
 * which aggregator/main.ts loads lazily for it).
 */
export async function loadGlobalModel(ctx: AggregatorContext, initialModel: () => Promise<Uint8Array>): Promise<StoredModel> {
  const { store, config, log } = ctx;
  const latest = await store.latest();
  if (latest) {
    // Streamed check (a 557 MB model is never read into memory): never serve a damaged model.
    await store.verify(latest.version);
    log.info({ version: latest.version, sha256: latest.sha256 }, 'global model loaded from the store');
    return latest;
  }
  const bundle = await initialModel();
  const decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
  if (decoded.header.meta.version !== 0)
    throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `the initial model must be version 0, not ${decoded.header.meta.version}`);
  const classes = decoded.header.meta.classes;
  if (classes.join('\n') !== config.model.classes.join('\n')) {
    throw new FedlineError(
      ErrorCodes.MODEL_INCOMPATIBLE,
      `initial model classes [${classes.join(', ')}] differ from the configured classes [${config.model.classes.join(', ')}]`,
    );
  }
  const stored = await store.save(bundle);
  log.info({ version: 0, sha256: stored.sha256, bytes: stored.bytes, tensors: stored.tensors.length }, 'initial global model created');
  return stored;
}
