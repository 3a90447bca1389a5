import type { AggregatorContext } from './aggregator-context.js';
import type { ActiveRound } from './active-round.js';
import { ModelBuilder } from './model-builder.js';
import type { StoredModel, VersionWriter } from './model-store.js';
import type { Strategy, StrategyOutput } from './strategy.js';
import type { SpoolReader, SpooledUpdate } from './update-spool.js';

/**
 * What the strategy decided (`refused`: accepted updates it left out) and, unless it kept the
 * global model, the next global model, stored but not yet published.
 */
export type RoundAggregation =
  { output: StrategyOutput & { kind: 'keep' }; stored: null } | { output: StrategyOutput & { kind: 'weights' }; stored: StoredModel };

/**
 * Average the spooled updates into the next global model, as a stream: spool files -> strategy
 * (block by block; readers decode f16/q8 and add deltas back to the base) -> the new version's
 * weights file, with the tensors not federated this round copied from the base. Memory stays at a
 * few blocks whatever the model's size and the number of updates.
 */
export async function aggregateRound(
  ctx: AggregatorContext,
  strategy: Strategy,
  active: ActiveRound,
  accepted: readonly SpooledUpdate[],
): Promise<RoundAggregation> {
  const { store, spool, clock, config } = ctx;
  const { base, state, record } = active;
  const { round } = state.plan;
  const federatedSpecs = base.tensors.filter((t) => active.federatedNames.includes(t.name));
  const baseHeader = await store.readHeader(base.version);
  const version = (await store.versions()).reduce((m, v) => Math.max(m, v), 0) + 1;
  const meta = { ...baseHeader.header.meta, version, round, createdAt: clock.now() };
  const baseValues = await store.openValues(base.version);
  let writer: VersionWriter | undefined;
  let readers: SpoolReader[] = [];
  let baseReader: Awaited<ReturnType<typeof store.openTensorReader>> | undefined;
  let output: StrategyOutput;
  try {
    writer = await store.createVersion(meta, base.tensors);
    readers = await spool.openReaders(round, accepted, baseValues);
    baseReader = await store.openTensorReader(base.version);
    const builder = new ModelBuilder(writer, active.federatedNames, baseValues);
    output = await strategy.aggregate({
      round,
      federated: federatedSpecs,
      results: readers,
      failures: state.failureList(),
      base: baseReader,
      versions: { base: base.version, next: version },
      minClients: config.minClients,
      output: builder.sink,
    });
    if (output.kind === 'keep') {
      await writer.abort();
      return { output, stored: null };
    }
    await builder.finish();
    record.aggregatedAt = clock.now();
  } catch (err) {
    await writer?.abort();
    throw err;
  } finally {
    await Promise.all([...readers, ...(baseReader ? [baseReader] : [])].map((r) => r.close()));
    await baseValues.close();
  }
  const refused = new Set((output.refused ?? []).map((f) => f.agent));
  const kept = accepted.filter((u) => !refused.has(u.agent));
  const stored = await writer.commit({
    contributors: Object.fromEntries(kept.map((u) => [u.agent, u.sampleCount])),
    updateMetrics: Object.fromEntries(kept.map((u) => [u.agent, u.metricsAfter])),
  });
  record.modelStoredAt = clock.now();
  return { output, stored };
}
