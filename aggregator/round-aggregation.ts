import type { AggregatorContext } from './aggregator-context.js';
import type { ActiveRound } from './active-round.js';
import { ModelBuilder } from './model-builder.js';
import type { StoredModel } from './model-store.js';
import type { VersionWriter } from './version-writer.js';
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

/** A driven round's aggregate (aggregator.ts runDrivenRound): the federated tensors in memory, not stored as a version. */
export type InMemoryAggregation =
  { output: StrategyOutput & { kind: 'keep' }; tensors: null } | { output: StrategyOutput & { kind: 'weights' }; tensors: Map<string, Float32Array> };

/**
 * The same strategy over the same spooled updates as aggregateRound, but the averaged federated
 * tensors stay in memory: a plant sends them upstream as its update instead of publishing them
 * as a version of its own (plant/plant-trainer.ts). The plant's model store holds only the
 * headquarters' versions, so no version number is taken.
 */
export async function aggregateInMemory(
  ctx: AggregatorContext,
  strategy: Strategy,
  active: ActiveRound,
  accepted: readonly SpooledUpdate[],
): Promise<InMemoryAggregation> {
  const { store, spool, config } = ctx;
  const { base, state } = active;
  const { round } = state.plan;
  const federatedSpecs = base.tensors.filter((t) => active.federatedNames.includes(t.name));
  const tensors = new Map(federatedSpecs.map((t) => [t.name, new Float32Array(t.shape.reduce((n, d) => n * d, 1))]));
  const baseValues = await store.openValues(base.version);
  let readers: SpoolReader[] = [];
  let baseReader: Awaited<ReturnType<typeof store.openTensorReader>> | undefined;
  try {
    readers = await spool.openReaders(round, accepted, baseValues);
    baseReader = await store.openTensorReader(base.version);
    const output = await strategy.aggregate({
      round,
      federated: federatedSpecs,
      results: readers,
      failures: state.failureList(),
      base: baseReader,
      versions: { base: base.version, next: base.version },
      minClients: config.minClients,
      output: (name, start, values) => {
        const target = tensors.get(name);
        if (!target || start + values.length > target.length)
          throw new RangeError(`the strategy wrote ${name}[${start}..${start + values.length}], outside the federated tensors`);
        target.set(values, start);
      },
    });
    return output.kind === 'keep' ? { output, tensors: null } : { output, tensors };
  } finally {
    await Promise.all([...readers, ...(baseReader ? [baseReader] : [])].map((r) => r.close()));
    await baseValues.close();
  }
}
