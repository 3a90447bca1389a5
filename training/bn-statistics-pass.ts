import type { Tensor } from '@tensorflow/tfjs';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { emptyMoments, mergeMomentsInto, momentsFromMeanVariance, type LayerMoments } from '../shared/fl/bn-statistics.js';
import type { NormalizationMode } from '../shared/protocol/messages.js';
import type { Tf } from './backend.js';
import type { ImageSet } from './image-folder.js';
import type { LayersModel } from './models.js';
import { normalizeInPlace } from './preprocess.js';

const STATS_BATCH = 64;

/**
 * The statistics pass of one site: the model runs forward once over the images (inference mode:
 * every BN layer normalises with the moving statistics the model carries, dropout off, no
 * augmentation, since these are the statistics inference will see), and for each BN layer the
 * per-channel count, mean and M2 of its *input* are accumulated (tf.moments per batch on the
 * backend, batches combined in float64 with Chan's formula: shared/fl/bn-statistics.ts).
 *
 * Layer l's input depends on how the layers before it normalise, i.e. on their statistics. One
 * pass with the model's current statistics makes the first BN layer exact and the others exact
 * to the extent the earlier layers' statistics already were; a second pass, after pooling, with
 * the pooled statistics written in, makes the second layer exact, and so on: L passes give the
 * exact pooled statistics of an L-layer model (sequential re-estimation). Callers choose the
 * number of passes (docs/training.md "Batch normalisation across sites").
 *
 * Layers are applied one by one, so the model must be a chain (tf.sequential, as training/models.ts
 * builds every architecture); a branching model with BN layers is refused.
 */
export async function batchNormMoments(tf: Tf, model: LayersModel, set: ImageSet, normalization: NormalizationMode): Promise<LayerMoments[]> {
  const layers = chainLayers(model);
  const bn = layers.filter((l) => l.getClassName() === 'BatchNormalization');
  const acc = new Map<string, LayerMoments>();
  const [h, w, c] = set.shape;
  const per = h * w * c;
  const x = new Float32Array(STATS_BATCH * per);
  for (let start = 0; start < set.count; start += STATS_BATCH) {
    const n = Math.min(STATS_BATCH, set.count - start);
    await set.read(
      Array.from({ length: n }, (_, i) => start + i),
      x,
    );
    const batch = x.subarray(0, n * per);
    normalizeInPlace(batch, n, c, normalization);
    const perLayer = tf.tidy(() => {
      let t: Tensor = tf.tensor4d(batch, [n, h, w, c]);
      const out: { layer: string; count: number; mean: Float32Array; variance: Float32Array }[] = [];
      for (const layer of layers) {
        if (layer.getClassName() === 'BatchNormalization') {
          const axes = t.shape.slice(0, -1).map((_, i) => i);
          const { mean, variance } = tf.moments(t, axes);
          const count = t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
          out.push({ layer: layer.name, count, mean: mean.dataSync() as Float32Array, variance: variance.dataSync() as Float32Array });
        }
        t = layer.apply(t, { training: false }) as Tensor;
      }
      return out;
    });
    for (const m of perLayer) {
      const into = acc.get(m.layer) ?? emptyMoments(m.layer, m.mean.length);
      mergeMomentsInto(into, momentsFromMeanVariance(m.layer, m.count, m.mean, m.variance));
      acc.set(m.layer, into);
    }
    // Yield between batches: MQTT keepalives, status.
    await new Promise((resolve) => setImmediate(resolve));
  }
  return bn.map((l) => acc.get(l.name) ?? emptyMoments(l.name, (l.getWeights()[0]?.shape[0] as number | undefined) ?? 0));
}

/** The model's layers in order, when every layer feeds only the next (a chain). */
function chainLayers(model: LayersModel): LayersModel['layers'] {
  const layers = model.layers.filter((l) => l.getClassName() !== 'InputLayer');
  const branching = layers.some((l) => l.inboundNodes.some((node) => node.inboundLayers.length > 1));
  if (branching) {
    throw new FedlineError(
      ErrorCodes.MODEL_INCOMPATIBLE,
      'the batch normalisation statistics pass needs a chain of layers (tf.sequential); this model branches',
    );
  }
  return layers;
}
