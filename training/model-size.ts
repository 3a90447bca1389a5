import type { EvalMetrics, UpdateMeta } from '../shared/protocol/messages.js';
import { resolveFederated } from '../shared/fl/federated-set.js';
import { bundleSize } from '../shared/bundle/tensor-bundle.js';
import type { Tf } from './backend.js';
import { weightNames } from './model-io.js';
import { buildModel, countParameters, HEAD_PREFIX, type BuildOptions } from './models.js';

/**
 * What a federation moves per round for a model, computed from the model itself (built with zero
 * weights: nothing is trained or initialised at random): parameters, and the exact size of one
 * agent's update bundle when everything is federated (`all`, the seed paper's Process1) and when
 * only the classifier head is (`head`, Process2).
 */
export interface FederationSizes {
  parameters: { total: number; head: number };
  /** Bytes of one update bundle (weights + header) per agent per round. */
  updateBytes: { all: number; head: number };
  /** Bytes of the global model bundle the aggregator publishes (all weights + topology). */
  modelBytes: number;
  tensors: { all: number; head: number };
}

function emptyMetrics(numClasses: number): EvalMetrics {
  const row = () => new Array<number>(numClasses).fill(0);
  return { samples: 0, loss: 0, accuracy: 0, balancedAccuracy: 0, confusion: Array.from({ length: numClasses }, row), precision: row(), recall: row() };
}

export async function federationSizes(tf: Tf, options: Omit<BuildOptions, 'init' | 'seed'>): Promise<FederationSizes> {
  const model = buildModel(tf, { ...options, seed: 0, init: 'zeros' });
  try {
    const names = weightNames(model);
    const tensors = model.weights.map((w, i) => ({ name: names[i]!, shape: [...w.shape] as number[], dtype: 'float32' as const }));
    const all = resolveFederated('all', names, []);
    const head = resolveFederated(
      'head',
      names,
      names.filter((n) => n.startsWith(HEAD_PREFIX)),
    );
    const meta: UpdateMeta = {
      kind: 'update',
      agent: 'agent-with-a-long-name',
      round: 1,
      baseVersion: 0,
      sampleCount: 1,
      epochs: 1,
      metricsBefore: emptyMetrics(options.numClasses),
      metricsAfter: emptyMetrics(options.numClasses),
      trainMs: 0,
      backend: 'wasm',
    };
    const pick = (set: string[]) => tensors.filter((t) => set.includes(t.name));
    const topology = model.toJSON(undefined, false) as object;
    return {
      parameters: countParameters(model),
      updateBytes: { all: bundleSize(pick(all), meta), head: bundleSize(pick(head), meta) },
      modelBytes: bundleSize(tensors, { kind: 'model', topology, classes: new Array<string>(options.numClasses).fill('CLASS'), headTensors: head }),
      tensors: { all: all.length, head: head.length },
    };
  } finally {
    model.dispose();
  }
}
