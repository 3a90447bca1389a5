import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { poolMoments, validateMoments, type LayerMoments } from '../shared/fl/bn-statistics.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import type { BnStatsMsg } from '../shared/protocol/messages.js';
import type { ActiveRound } from './active-round.js';
import type { AggregatorContext } from './aggregator-context.js';
import { ModelBuilder } from './model-builder.js';
import type { StoredModel } from './model-store.js';
import type { VersionWriter } from './version-writer.js';

/**
 * Statistics rounds (aggregator batchNorm `pooled-statistics`, docs/training.md): after a
 * training round's average made version v, every agent runs v forward over its training images
 * and sends, per BN layer and channel, the count, mean and M2 of the layer's input (`bn-stats`).
 * They are pooled in agent id order (shared/fl/bn-statistics.ts, float64) and written into the
 * moving mean and variance of version v+1: v's weights with the statistics of the pooled data.
 */

/**
 * pooled-statistics with a server optimizer (fedavgm, fedadam, fedyogi) is refused: the optimizer's
 * state is keyed by the version it made, and the statistics round makes another version from it.
 */
export function checkBatchNormConfig(config: { batchNorm: string; strategy: string }): void {
  if (config.batchNorm === 'pooled-statistics' && ['fedavgm', 'fedadam', 'fedyogi'].includes(config.strategy)) {
    throw new FedlineError(
      ErrorCodes.CONFIG_INVALID,
      `batchNorm pooled-statistics does not combine with the server optimizer of strategy ${config.strategy} yet (its state is keyed by version); use fedavg, fedprox or a robust strategy`,
    );
  }
}

/** BN layers of a stored model and their channel counts, from its `<layer>/moving_mean` tensors. */
export function batchNormChannels(model: Pick<StoredModel, 'tensors'>): Map<string, number> {
  const out = new Map<string, number>();
  for (const t of model.tensors) if (t.name.endsWith('/moving_mean')) out.set(t.name.slice(0, -'/moving_mean'.length), elementCount(t.shape));
  return out;
}

/** An agent's statistics: checked against the round and the base model's BN layers, recorded, kept in the spool (restart). */
export function handleStatisticsReport(ctx: AggregatorContext, active: ActiveRound, msg: BnStatsMsg): void {
  const { plan } = active.state;
  if (plan.kind !== 'statistics')
    throw new FedlineError(ErrorCodes.MSG_SCHEMA, `round ${msg.round} is a ${plan.kind} round; bn-stats belong to statistics rounds`);
  if (msg.baseVersion !== active.base.version) {
    throw new FedlineError(
      ErrorCodes.WRONG_BASE,
      `statistics of version ${msg.baseVersion}, but round ${msg.round} is based on version ${active.base.version}`,
    );
  }
  const moments = checkedMoments(batchNormChannels(active.base), msg);
  if (!active.state.recordStatistics(msg.agent, moments)) return;
  active.record.bytesDown += msg.downloadedBytes;
  ctx.log.info({ round: msg.round, agent: msg.agent, layers: moments.length }, 'batch normalisation statistics received');
  ctx.spool
    .saveStatistics(msg.round, msg.agent, moments)
    .catch((err: Error) => ctx.log.warn({ err: err.message, agent: msg.agent }, 'could not keep the statistics on disk'))
    .finally(() => active.checkClose());
}

function checkedMoments(expected: ReadonlyMap<string, number>, msg: BnStatsMsg): LayerMoments[] {
  const bad = (what: string) => new FedlineError(ErrorCodes.MSG_SCHEMA, `bn-stats of ${msg.agent}: ${what}`, { agent: msg.agent });
  const got = new Set(msg.layers.map((l) => l.layer));
  const missing = [...expected.keys()].filter((l) => !got.has(l));
  if (missing.length || got.size !== msg.layers.length || got.size !== expected.size) {
    throw bad(`layers ${[...got].join(', ') || '(none)'} do not match the model's BN layers ${[...expected.keys()].join(', ')}`);
  }
  return msg.layers.map((l) => {
    const channels = expected.get(l.layer)!;
    if (l.mean.length !== channels || l.m2.length !== channels)
      throw bad(`layer ${l.layer} has ${channels} channels, got ${l.mean.length} means and ${l.m2.length} M2`);
    const m = { layer: l.layer, count: l.count, mean: Float64Array.from(l.mean), m2: Float64Array.from(l.m2) };
    validateMoments(m);
    return m;
  });
}

/**
 * The next version: the base's tensors streamed through, its moving means and variances replaced
 * by the pooled statistics. Stored, not yet published.
 */
export async function storePooledStatistics(ctx: AggregatorContext, active: ActiveRound): Promise<StoredModel> {
  const { store, clock } = ctx;
  const { base } = active;
  const pooled = poolMoments(active.state.statisticsByAgent().map(([, m]) => m));
  const replaced = new Map<string, Float64Array>();
  for (const [layer, p] of pooled) {
    replaced.set(`${layer}/moving_mean`, p.mean);
    replaced.set(`${layer}/moving_variance`, p.variance);
  }
  const header = await store.readHeader(base.version);
  const version = (await store.versions()).reduce((m, v) => Math.max(m, v), 0) + 1;
  const meta = { ...header.header.meta, version, round: active.state.plan.round, createdAt: clock.now() };
  const baseValues = await store.openValues(base.version);
  let writer: VersionWriter | undefined;
  try {
    writer = await store.createVersion(meta, base.tensors);
    const builder = new ModelBuilder(writer, [...replaced.keys()], baseValues);
    for (const t of base.tensors) {
      const values = replaced.get(t.name);
      if (values) await builder.sink(t.name, 0, Float32Array.from(values));
    }
    await builder.finish();
  } catch (err) {
    await writer?.abort();
    throw err;
  } finally {
    await baseValues.close();
  }
  // The weights are the base's: so are its contributors.
  return writer.commit({ contributors: base.contributors, updateMetrics: base.updateMetrics });
}
