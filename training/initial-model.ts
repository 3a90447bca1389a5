import type { ModelSpec } from '../shared/config/service-config.js';
import type { ModelMeta, NormalizationMode } from '../shared/protocol/messages.js';
import { encodeBundle } from '../shared/bundle/tensor-bundle.js';
import type { Tf } from './backend.js';
import { extractModel } from './model-io.js';
import { buildModel, HEAD_PREFIX, type LayersModel } from './models.js';
import { loadPretrainedWeights, type PretrainedReport } from './pretrained.js';

export type InitialModelSpec = Pick<ModelSpec, 'architecture' | 'inputShape' | 'classes' | 'seed' | 'initFrom' | 'normalization'> &
  Partial<Pick<ModelSpec, 'width' | 'head' | 'batchNorm'>> & {
    /** Kernel init of the seeded layers (training/models.ts); default seeded (Glorot). */
    init?: 'seeded' | 'he';
  };

/** The normalisation a model uses: the configured one, else imagenet for a pretrained init, else per-image. */
export function effectiveNormalization(spec: Pick<ModelSpec, 'normalization' | 'initFrom'>): NormalizationMode {
  return spec.normalization ?? (spec.initFrom ? 'imagenet' : 'per-image');
}

/** The configured architecture with its seeded init, and the pretrained weights of `initFrom` where layer names match. */
export async function buildInitialModel(tf: Tf, spec: InitialModelSpec): Promise<{ model: LayersModel; pretrained: PretrainedReport | null }> {
  const model = buildModel(tf, {
    architecture: spec.architecture,
    inputShape: spec.inputShape,
    numClasses: spec.classes.length,
    seed: spec.seed,
    ...(spec.init ? { init: spec.init } : {}),
    ...(spec.batchNorm ? { batchNorm: true } : {}),
    ...(spec.width !== undefined ? { width: spec.width } : {}),
    ...(spec.head ? { head: { dense: spec.head.dense, dropout: spec.head.dropout ?? 0 } } : {}),
  });
  try {
    const pretrained = spec.initFrom ? await loadPretrainedWeights(tf, model, spec.initFrom) : null;
    return { model, pretrained };
  } catch (err) {
    model.dispose();
    throw err;
  }
}

/**
 * The common initial global model (version 0): the configured architecture with a seeded init,
 * its layers overwritten by name from a pretrained tfjs layers model folder (`initFrom`) where one
 * is given. Every agent receives these exact bytes, so every agent starts from identical weights,
 * the new head included.
 */
export async function buildInitialBundle(tf: Tf, spec: InitialModelSpec, onPretrained?: (report: PretrainedReport) => void): Promise<Buffer> {
  const { model, pretrained } = await buildInitialModel(tf, spec);
  try {
    if (pretrained) onPretrained?.(pretrained);
    const { topology, tensors } = await extractModel(tf, model);
    const meta: ModelMeta = {
      kind: 'model',
      version: 0,
      round: 0,
      topology,
      headTensors: tensors.filter((t) => t.name.startsWith(HEAD_PREFIX)).map((t) => t.name),
      classes: [...spec.classes],
      inputShape: [...spec.inputShape],
      normalization: effectiveNormalization(spec),
      createdAt: Date.now(),
    };
    return encodeBundle(tensors, meta);
  } finally {
    model.dispose();
  }
}
