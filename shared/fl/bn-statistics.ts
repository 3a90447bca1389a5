import { ErrorCodes, FedlineError } from '../protocol/errors.js';

/**
 * Batch normalisation statistics across sites (pure: no tfjs, no I/O).
 *
 * A BN layer normalises its input per channel with a moving mean and variance. FedAvg of the
 * sites' moving variances is not the variance of the pooled data: with site means m_k and
 * variances v_k, the pooled variance is sum_k w_k v_k + sum_k w_k (m_k - m)^2 (law of total
 * variance); the average drops the second, between-site term, which is large exactly when the
 * sites are non-IID. (The averaged moving statistics are also stale: each is an exponential
 * average over the site's own training steps, taken with weights that are no longer the model's.)
 *
 * So the global model's statistics are re-estimated from the data: every site sends, per BN
 * layer and channel, the count, mean and M2 (sum of squared deviations from its mean) of the
 * layer's input, and they are pooled with Chan et al.'s parallel combination ("Updating Formulae
 * and a Pairwise Algorithm for Computing Sample Variances", 1979) in float64: no sum of squares is
 * ever formed, so a channel with a large mean and a small spread keeps its digits.
 *
 * The variance written to `moving_variance` is the biased (population) one, M2 / count: that is
 * what TensorFlow.js' BatchNormalization keeps (tf.moments of the batch, no Bessel correction;
 * PyTorch's running_var is the unbiased one). With count = images x height x width per channel
 * the difference is below float32 resolution anyway.
 */

/** Per-channel moments of one BN layer's input over some images. */
export interface LayerMoments {
  /** The BN layer's name (its tensors are `<layer>/moving_mean`, `<layer>/moving_variance`). */
  layer: string;
  /** Values per channel (images x positions). */
  count: number;
  mean: Float64Array;
  /** Sum over the values of (x - mean)^2, per channel. */
  m2: Float64Array;
}

export const emptyMoments = (layer: string, channels: number): LayerMoments => ({
  layer,
  count: 0,
  mean: new Float64Array(channels),
  m2: new Float64Array(channels),
});

/** a += b (Chan et al.): combine two disjoint sets' moments into a's. */
export function mergeMomentsInto(a: LayerMoments, b: LayerMoments): void {
  if (a.mean.length !== b.mean.length) {
    throw new FedlineError(ErrorCodes.MSG_SCHEMA, `layer ${b.layer}: ${b.mean.length} channels, expected ${a.mean.length}`, { layer: b.layer });
  }
  if (b.count === 0) return;
  const n = a.count + b.count;
  const wb = b.count / n;
  const cross = (a.count * b.count) / n;
  for (let c = 0; c < a.mean.length; c++) {
    const delta = b.mean[c]! - a.mean[c]!;
    a.mean[c] = a.mean[c]! + delta * wb;
    a.m2[c] = a.m2[c]! + b.m2[c]! + delta * delta * cross;
  }
  a.count = n;
}

/**
 * Moments of a batch given as per-channel mean and biased variance over `count` values each (what
 * tf.moments returns), as LayerMoments.
 */
export function momentsFromMeanVariance(layer: string, count: number, mean: ArrayLike<number>, variance: ArrayLike<number>): LayerMoments {
  const m = emptyMoments(layer, mean.length);
  m.count = count;
  for (let c = 0; c < mean.length; c++) {
    m.mean[c] = mean[c]!;
    m.m2[c] = Math.max(0, variance[c]!) * count;
  }
  return m;
}

/** Moments of channel-last values (NHWC or NC flattened: channel = index % channels), float64, two passes. */
export function momentsOfValues(layer: string, values: ArrayLike<number>, channels: number): LayerMoments {
  const m = emptyMoments(layer, channels);
  const n = values.length / channels;
  if (!Number.isInteger(n)) throw new FedlineError(ErrorCodes.MSG_SCHEMA, `layer ${layer}: ${values.length} values are not a multiple of ${channels} channels`);
  for (let i = 0; i < values.length; i++) m.mean[i % channels]! += values[i]!;
  for (let c = 0; c < channels; c++) m.mean[c] = m.mean[c]! / n;
  for (let i = 0; i < values.length; i++) {
    const d = values[i]! - m.mean[i % channels]!;
    m.m2[i % channels]! += d * d;
  }
  m.count = n;
  return m;
}

export interface PooledStatistics {
  count: number;
  mean: Float64Array;
  /** Biased (population) variance, M2 / count: what tfjs' moving_variance holds. */
  variance: Float64Array;
}

/**
 * Pool every site's moments, layer by layer: the mean and variance of all the sites' values
 * together. Sites are combined in the order given (callers sort them by id, as FedAvg does, so
 * the result does not depend on arrival order). Every site must report the same layers and
 * channel counts; a layer nobody has values for is an error (its statistics would be 0/0).
 */
export function poolMoments(sites: readonly (readonly LayerMoments[])[]): Map<string, PooledStatistics> {
  const acc = new Map<string, LayerMoments>();
  for (const site of sites) {
    for (const m of site) {
      validateMoments(m);
      const into = acc.get(m.layer) ?? emptyMoments(m.layer, m.mean.length);
      mergeMomentsInto(into, m);
      acc.set(m.layer, into);
    }
  }
  const out = new Map<string, PooledStatistics>();
  for (const [layer, m] of acc) {
    if (m.count === 0) throw new FedlineError(ErrorCodes.MSG_SCHEMA, `batch normalisation layer ${layer}: no site reported any values`, { layer });
    out.set(layer, { count: m.count, mean: m.mean, variance: m.m2.map((v) => v / m.count) });
  }
  return out;
}

/** Counts, means and M2 must be finite and non-negative where they must; bad input names the layer. */
export function validateMoments(m: LayerMoments): void {
  const bad = (what: string) => new FedlineError(ErrorCodes.MSG_SCHEMA, `batch normalisation statistics of layer ${m.layer}: ${what}`, { layer: m.layer });
  if (!Number.isFinite(m.count) || m.count < 0) throw bad(`count ${m.count} is not a non-negative number`);
  if (m.mean.length !== m.m2.length) throw bad(`${m.mean.length} means but ${m.m2.length} M2 values`);
  for (let c = 0; c < m.mean.length; c++) {
    if (!Number.isFinite(m.mean[c]!) || !Number.isFinite(m.m2[c]!) || m.m2[c]! < 0) throw bad(`channel ${c} has mean ${m.mean[c]} and M2 ${m.m2[c]}`);
  }
}

interface TopologyLayer {
  class_name?: unknown;
  config?: { name?: unknown; layers?: unknown };
}

/**
 * Names of the BatchNormalization layers in a tfjs layers topology (model.json's modelTopology,
 * Sequential or functional), in model order.
 */
export function batchNormLayers(topology: Record<string, unknown>): string[] {
  const out: string[] = [];
  const visit = (node: TopologyLayer): void => {
    if (node.class_name === 'BatchNormalization' && typeof node.config?.name === 'string') out.push(node.config.name);
    const inner = node.config?.layers;
    if (Array.isArray(inner)) for (const l of inner as TopologyLayer[]) visit(l);
  };
  const root = (topology.model_config ?? topology) as TopologyLayer;
  visit(root);
  return out;
}

/** The tensors of the given BN layers: gamma, beta, moving_mean, moving_variance (`<layer>/<weight>`). */
export function isBatchNormTensor(name: string, bnLayers: readonly string[]): boolean {
  const slash = name.lastIndexOf('/');
  return slash > 0 && bnLayers.includes(name.slice(0, slash));
}

/**
 * The model's tensors with each pooled layer's moving_mean and moving_variance replaced (float32),
 * all others as they were. A pooled layer the model lacks is an error.
 */
export function withPooledStatistics<T extends { name: string; data: Float32Array }>(
  tensors: readonly T[],
  pooled: ReadonlyMap<string, PooledStatistics>,
): T[] {
  const names = new Set(tensors.map((t) => t.name));
  for (const layer of pooled.keys()) {
    for (const w of ['moving_mean', 'moving_variance']) {
      if (!names.has(`${layer}/${w}`)) throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `the model has no tensor ${layer}/${w}`, { layer });
    }
  }
  return tensors.map((t) => {
    const slash = t.name.lastIndexOf('/');
    const p = pooled.get(t.name.slice(0, slash));
    const which = t.name.slice(slash + 1);
    if (!p || (which !== 'moving_mean' && which !== 'moving_variance')) return t;
    const values = which === 'moving_mean' ? p.mean : p.variance;
    if (values.length !== t.data.length) {
      throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `${t.name} has ${t.data.length} channels, the pooled statistics ${values.length}`);
    }
    return { ...t, data: Float32Array.from(values) };
  });
}

/** Bytes of one site's statistics on the wire: per layer a count and two float64 vectors. */
export const momentsBytes = (moments: readonly LayerMoments[]): number => moments.reduce((s, m) => s + 8 + 16 * m.mean.length, 0);
