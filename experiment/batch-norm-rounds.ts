import { batchNormLayers, isBatchNormTensor, momentsBytes, poolMoments, withPooledStatistics } from '../shared/fl/bn-statistics.js';
import type { GlobalModel, Trainer } from '../training/trainer.js';

/**
 * Batch normalisation across sites in the experiment's in-process loop (docs/training.md "Batch
 * normalisation across sites"):
 *   - average: BN tensors are federated like any other (FedAvg of gamma, beta, moving mean and
 *     moving variance): the moving variance misses the between-site variance;
 *   - pooled-statistics: as average, then a statistics pass re-estimates the new global model's
 *     moving mean and variance from every site's training images with the new weights;
 *   - local (FedBN, Li et al. 2021): BN tensors never leave a site; each site trains and is
 *     judged with its own, across rounds. The global model (external set, inspection) gets the
 *     sample-weighted mean of the sites' gamma and beta and pooled statistics from a statistics pass.
 */
export const batchNormModes = ['average', 'pooled-statistics', 'local'] as const;
export type BatchNormMode = (typeof batchNormModes)[number];

export interface StatisticsParticipant {
  id: string;
  trainer: Pick<Trainer, 'batchNormStatistics'>;
}

/**
 * The statistics pass: `passes` times, every site's moments of each BN layer's input with the
 * model as it stands, pooled (sites in id order) and written into the model's moving statistics.
 * Pass p makes the first p BN layers exact (layer l's input depends on the layers before it);
 * returns the model and the bytes the sites' statistics would take on the wire.
 */
export async function reestimateStatistics(
  model: GlobalModel,
  participants: readonly StatisticsParticipant[],
  passes: number,
): Promise<{ model: GlobalModel; bytesUp: number }> {
  if (batchNormLayers(model.meta.topology).length === 0) return { model, bytesUp: 0 };
  const sorted = [...participants].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  let bytesUp = 0;
  let current = model;
  for (let p = 0; p < passes; p++) {
    const perSite = [];
    for (const s of sorted) {
      const m = await s.trainer.batchNormStatistics(current);
      bytesUp += momentsBytes(m);
      perSite.push(m);
    }
    current = { ...current, tensors: withPooledStatistics(current.tensors, poolMoments(perSite)) };
  }
  return { model: current, bytesUp };
}

/** FedBN: each site's own BN tensors, kept across rounds (a site starts from the initial model's). */
export class LocalBatchNorm {
  private readonly bySite = new Map<string, Map<string, Float32Array>>();
  private readonly sampleCounts = new Map<string, number>();
  readonly layers: string[];

  constructor(initial: GlobalModel) {
    this.layers = batchNormLayers(initial.meta.topology);
  }

  isLocal(name: string): boolean {
    return isBatchNormTensor(name, this.layers);
  }

  /** The global model with the site's BN tensors in place of the global ones. */
  siteModel(site: string, global: GlobalModel): GlobalModel {
    const own = this.bySite.get(site);
    if (!own) return global;
    return { ...global, tensors: global.tensors.map((t) => (own.has(t.name) ? { ...t, data: own.get(t.name)! } : t)) };
  }

  /** Keep the BN tensors a site's training returned. */
  keep(site: string, tensors: readonly { name: string; data: Float32Array }[], sampleCount: number): void {
    this.bySite.set(site, new Map(tensors.filter((t) => this.isLocal(t.name)).map((t) => [t.name, t.data])));
    this.sampleCounts.set(site, sampleCount);
  }

  /**
   * A global model for what has no site of its own (the external set): the sites' gamma and beta
   * averaged by sample count (float64), moving statistics left for a statistics pass to set.
   */
  globalModel(global: GlobalModel): GlobalModel {
    const sites = [...this.bySite.keys()].sort();
    if (sites.length === 0) return global;
    const total = sites.reduce((s, k) => s + this.sampleCounts.get(k)!, 0);
    const tensors = global.tensors.map((t) => {
      if (!this.isLocal(t.name) || /\/moving_(mean|variance)$/.test(t.name)) return t;
      const acc = new Float64Array(t.data.length);
      for (const k of sites) {
        const w = this.sampleCounts.get(k)! / total;
        const v = this.bySite.get(k)!.get(t.name)!;
        for (let i = 0; i < acc.length; i++) acc[i] = acc[i]! + w * v[i]!;
      }
      return { ...t, data: Float32Array.from(acc) };
    });
    return { ...global, tensors };
  }
}
