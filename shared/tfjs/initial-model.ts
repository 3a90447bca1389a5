import type { ModelSpec } from '../config.js';
import type { ModelMeta } from '../messages.js';
import { encodeBundle } from '../tensor-bundle.js';
import type { Tf } from './backend.js';
import { extractModel, loadLayersModelFromDir } from './model-io.js';
import { buildModel, HEAD_PREFIX } from './models.js';

/**
 * The common initial global model (version 0): built with a seeded init, or read from a tfjs
 * layers model folder (`initFrom`). Every agent receives these exact bytes, so every agent starts
 * from identical weights.
 */
export async function buildInitialBundle(tf: Tf, spec: Pick<ModelSpec, 'architecture' | 'inputShape' | 'classes' | 'seed' | 'initFrom' | 'normalization'>): Promise<Buffer> {
  const model = spec.initFrom
    ? await loadLayersModelFromDir(tf, spec.initFrom)
    : buildModel(tf, { architecture: spec.architecture, inputShape: spec.inputShape, numClasses: spec.classes.length, seed: spec.seed });
  try {
    const { topology, tensors } = await extractModel(tf, model);
    const outputs = (model.outputs[0]?.shape ?? []).at(-1);
    if (outputs !== spec.classes.length) throw new Error(`model has ${outputs} outputs but the federation has ${spec.classes.length} classes`);
    const meta: ModelMeta = {
      kind: 'model',
      version: 0,
      round: 0,
      topology,
      headTensors: tensors.filter((t) => t.name.startsWith(HEAD_PREFIX)).map((t) => t.name),
      classes: [...spec.classes],
      inputShape: [...spec.inputShape],
      normalization: spec.normalization,
      createdAt: Date.now(),
    };
    return encodeBundle(tensors, meta);
  } finally {
    model.dispose();
  }
}
