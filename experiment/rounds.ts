import { meetsTarget, scheduledLearningRate } from '../shared/fl/schedule.js';
import type { GlobalModel, Trainer, TrainResult } from '../training/trainer.js';
import { clientVariate } from '../shared/fl/scaffold.js';
import { fedAvg } from '../shared/fl/fedavg.js';
import { resolveFederated } from '../shared/fl/federated-set.js';
import type { EvalMetrics, ModelMeta, TrainTask, UpdateMeta } from '../shared/protocol/messages.js';
import { elementCount, encodeBundle, type NamedTensor } from '../shared/bundle/tensor-bundle.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import type { TensorBlockReader } from '../shared/fl/fedavg.js';
import { createStrategy } from '../aggregator/strategy-registry.js';
import type { Strategy } from '../aggregator/strategy.js';
import { silentLogger } from '../shared/util/logger.js';
import { LocalBatchNorm, reestimateStatistics, type BatchNormMode } from './batch-norm-rounds.js';

/**
 * The experiment's training loop, in one process: rounds of local training and (with several
 * participants) FedAvg, exactly as the aggregator and the agents run them over MQTT:
 *   - round r starts from global version r-1; every participant first evaluates it on its local
 *     test split (the seed paper's workflow), then trains `epochs` local epochs (or `localSteps`
 *     optimizer steps) from it;
 *   - the learning rate of round r is learningRate * learningRateDecay^(r-1) (the aggregator's
 *     schedule); the optimizer starts fresh every round (optimizerState reset: only weights travel);
 *   - FedAvg (shared/fl/fedavg.ts: weights by sample count, participants in sorted id order, float64
 *     sums) over the federated tensors; the others stay as in the base model;
 *   - batch normalisation (experiment/batch-norm-rounds.ts): `average` (FedAvg of the BN tensors),
 *     `pooled-statistics` (then a statistics pass re-estimates the moving statistics from every
 *     site's images with the new weights) or `local` (FedBN: BN tensors stay at their site);
 *   - with stopAtTarget, a round whose base model reaches the target accuracy on every
 *     participant's test split stops the run (the aggregator's targetAccuracy).
 * Centralized and local-only training use the same loop with one participant (no averaging), so
 * every arm follows one schedule. Bytes are those of the bundles the agents would send and fetch.
 */

export interface Participant {
  id: string;
  trainer: Trainer;
}

export interface RoundRecord {
  round: number;
  baseVersion: number;
  newVersion: number | null;
  learningRate: number;
  /** The base model on each participant's local test split, before local training. */
  baseMetrics: Record<string, EvalMetrics>;
  /**
   * The base model on the held-out sets (external, probes) when the loop was given `watch`: the
   * learning curve on data no site trains on (does a model keep improving, or decline?).
   */
  watchMetrics?: Record<string, EvalMetrics>;
  /** Each participant's model after local training, on its local test split. */
  localMetrics: Record<string, EvalMetrics>;
  sampleCounts: Record<string, number>;
  trainMs: Record<string, number>;
  /** Update bundles sent (federated) / global model bundles fetched by the participants. */
  bytesUp: number;
  /** Of bytesUp: the statistics pass's per-channel moments (pooled-statistics). */
  statisticsBytesUp?: number;
  bytesDown: number;
}

/** A federated arm's strategy, as the aggregator config names and tunes it. */
export type ArmStrategy = Pick<AggregatorConfig, 'strategy' | 'proxMu' | 'serverOptimizer'>;

/** SCAFFOLD's variates in the simulation: c from the strategy, each participant's c_i as its agent keeps it. */
interface Variates {
  c: ReadonlyMap<string, Float32Array> | null;
  clients: Map<string, Map<string, Float32Array>>;
}

export interface RoundLoopOptions {
  initial: GlobalModel;
  rounds: number;
  task: Omit<TrainTask, 'federated'>;
  learningRateDecay: number;
  federate: 'all' | 'head';
  participants: readonly Participant[];
  /** true: participants are agents (FedAvg, bytes counted); false: one trainer, no network. */
  federated: boolean;
  /** Federated: the aggregator's strategy (default fedavg); server optimizers keep their state in stateDir. */
  strategy?: ArmStrategy & { stateDir: string };
  /** Federated: how batch normalisation crosses sites (default average). */
  batchNorm?: BatchNormMode;
  /** pooled-statistics and local: passes of the statistics pass per round (pass p makes the first p BN layers exact). Default 1. */
  statisticsPasses?: number;
  targetAccuracy: number | null;
  stopAtTarget: boolean;
  /**
   * How the global model is judged before each round and at the end; default: each participant
   * on its own local test split (the agents' evaluation). The centralized arm passes every site's split.
   */
  evaluate?: (model: GlobalModel) => Promise<Record<string, EvalMetrics>>;
  onRound?: (r: RoundRecord) => void;
  /** Also judge the base model of every round on these sets (recorded as watchMetrics); none by default. */
  watch?: (model: GlobalModel) => Promise<Record<string, EvalMetrics>>;
}

export interface RoundLoopResult {
  rounds: RoundRecord[];
  final: GlobalModel;
  /** The final model on each participant's local test split. */
  finalMetrics: Record<string, EvalMetrics>;
  reason: string;
  /** batchNorm local (FedBN): each participant's final model (the global one with its own BN tensors). */
  siteModels?: Record<string, GlobalModel>;
}

export { meetsTarget };

/**
 * "Rounds to target": the first round after which the model met the target on every
 * participant's test split (0: the initial model already did), or null.
 */
export function roundsToTarget(
  rounds: readonly { round: number; baseMetrics: Record<string, EvalMetrics> }[],
  finalMetrics: Record<string, EvalMetrics>,
  ids: readonly string[],
  target: number | null,
): number | null {
  if (target === null) return null;
  for (const r of rounds) if (meetsTarget(r.baseMetrics, ids, target)) return r.round - 1;
  const last = rounds.at(-1);
  return last && meetsTarget(finalMetrics, ids, target) ? last.round : null;
}

const bundleOf = (m: GlobalModel) => encodeBundle(m.tensors, m.meta);

export async function runRounds(o: RoundLoopOptions): Promise<RoundLoopResult> {
  const participants = [...o.participants].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const bnMode: BatchNormMode = o.federated ? (o.batchNorm ?? 'average') : 'average';
  const passes = o.statisticsPasses ?? 1;
  // FedBN: each participant trains and is judged with its own BN tensors.
  const localBn = bnMode === 'local' ? new LocalBatchNorm(o.initial) : null;
  const siteModel = (id: string, m: GlobalModel) => (localBn ? localBn.siteModel(id, m) : m);
  const evaluate =
    o.evaluate ??
    (async (model: GlobalModel) => {
      const out: Record<string, EvalMetrics> = {};
      for (const p of participants) out[p.id] = await p.trainer.evaluate(siteModel(p.id, model));
      return out;
    });
  let global = o.initial;
  const records: RoundRecord[] = [];
  let reason = `${o.rounds} rounds done`;
  let finalMetrics: Record<string, EvalMetrics> | null = null;
  const names = global.tensors.map((t) => t.name);
  const federatedNames = resolveFederated(o.federate, names, global.meta.headTensors);
  // What is averaged: FedBN trains the BN tensors too but keeps them at the site.
  const averagedNames = localBn ? federatedNames.filter((n) => !localBn.isLocal(n)) : federatedNames;
  const strategy = o.federated && o.strategy ? armStrategy(o, participants) : null;
  const variates: Variates = { c: null, clients: new Map() };
  for (let round = 1; round <= o.rounds; round++) {
    const learningRate = scheduledLearningRate(o.task.learningRate, o.learningRateDecay, round - 1);
    const configured = strategy?.configureRound({ round, kind: 'train', available: participants.map((p) => p.id), trainRoundsBefore: round - 1 }).task;
    const { proxMu, scaffold } = configured ?? {};
    const task: TrainTask = { ...o.task, learningRate, ...(proxMu === undefined ? {} : { proxMu }), ...(scaffold ? { scaffold } : {}), federated: o.federate };
    const controlBytes = scaffold ? await roundControl(strategy!, global, federatedNames, variates) : 0;
    const modelBytes = o.federated ? bundleOf(global).byteLength : 0;
    const record: RoundRecord = {
      round,
      baseVersion: global.version,
      newVersion: null,
      learningRate,
      baseMetrics: {},
      localMetrics: {},
      sampleCounts: {},
      trainMs: {},
      bytesUp: 0,
      bytesDown: 0,
    };
    record.baseMetrics = await evaluate(global);
    if (o.watch) record.watchMetrics = await o.watch(global);
    record.bytesDown = (modelBytes + controlBytes) * participants.length;
    if (o.stopAtTarget && meetsTarget(record.baseMetrics, Object.keys(record.baseMetrics), o.targetAccuracy)) {
      records.push(record);
      o.onRound?.(record);
      reason = 'target accuracy reached';
      finalMetrics = record.baseMetrics;
      break;
    }
    const results = [];
    for (const p of participants) {
      const ci = variates.clients.get(p.id) ?? null;
      const r = await p.trainer.train(siteModel(p.id, global), task, federatedNames, scaffold ? { control: { c: variates.c, ci } } : {});
      if (scaffold) variates.clients.set(p.id, nextClientVariate(global, r, variates.c, ci, learningRate));
      localBn?.keep(p.id, r.tensors, r.sampleCount);
      const sent = localBn ? r.tensors.filter((t) => !localBn.isLocal(t.name)) : r.tensors;
      results.push({ id: p.id, r: { ...r, tensors: sent }, ...(scaffold ? { steps: r.steps } : {}) });
      record.localMetrics[p.id] = r.metricsAfter;
      record.sampleCounts[p.id] = r.sampleCount;
      record.trainMs[p.id] = r.trainMs;
      if (o.federated)
        record.bytesUp += updateBytes(
          p,
          round,
          global.version,
          task.epochs,
          record.baseMetrics[p.id] ?? r.metricsAfter,
          r,
          sent,
          scaffold ? r.steps : undefined,
        );
    }
    const next = await nextWeights(o.federated, strategy, global, averagedNames, round, results);
    const meta: ModelMeta = { ...global.meta, version: global.version + 1, round, createdAt: Date.now() };
    global = { version: meta.version, sha256: '', meta, tensors: global.tensors.map((t) => ({ ...t, data: next.get(t.name) ?? t.data })) };
    if (bnMode === 'pooled-statistics') {
      const s = await reestimateStatistics(global, participants, passes);
      global = s.model;
      record.statisticsBytesUp = s.bytesUp;
      record.bytesUp += s.bytesUp;
      // Over MQTT every agent downloads the averaged version for the statistics round, then the pooled one.
      record.bytesDown += bundleOf(global).byteLength * participants.length;
    }
    record.newVersion = global.version;
    records.push(record);
    o.onRound?.(record);
  }
  finalMetrics ??= await evaluate(global);
  if (!localBn) return { rounds: records, final: global, finalMetrics, reason };
  // FedBN has no global BN: the model for the external set gets the sites' mean gamma/beta and pooled statistics.
  const siteModels = Object.fromEntries(participants.map((p) => [p.id, siteModel(p.id, global)]));
  const final = (await reestimateStatistics(localBn.globalModel(global), participants, passes)).model;
  return { rounds: records, final, finalMetrics, reason, siteModels };
}

/** The round's new weights: the one trainer's (centralized, local-only), or the strategy's / FedAvg's average of the given tensors. */
async function nextWeights(
  federated: boolean,
  strategy: Strategy | null,
  global: GlobalModel,
  averagedNames: readonly string[],
  round: number,
  results: readonly { id: string; steps?: number; r: { sampleCount: number; tensors: readonly NamedTensor[] } }[],
): Promise<Map<string, Float32Array>> {
  if (results.length === 1 && !federated) return new Map(results[0]!.r.tensors.map((t) => [t.name, t.data]));
  const weighted = results.map(({ id, steps, r }) => ({ id, weight: r.sampleCount, tensors: r.tensors, ...(steps === undefined ? {} : { steps }) }));
  if (strategy) return aggregateWith(strategy, global, averagedNames, round, weighted);
  return fedAvg(
    weighted.map((w) => ({ ...w, tensors: new Map(w.tensors.map((t) => [t.name, t.data])) })),
    averagedNames,
  );
}

/** Bytes of the update bundle a participant would send: its federated tensors after training, with the update header. */
function updateBytes(
  p: Participant,
  round: number,
  baseVersion: number,
  epochs: number,
  metricsBefore: EvalMetrics,
  r: { sampleCount: number; metricsAfter: EvalMetrics; trainMs: number },
  tensors: readonly NamedTensor[],
  /** SCAFFOLD: the optimizer steps taken, sent in the update's meta. */
  steps?: number,
): number {
  const meta: UpdateMeta = {
    kind: 'update',
    agent: p.id,
    round,
    baseVersion,
    sampleCount: r.sampleCount,
    epochs,
    metricsBefore,
    metricsAfter: r.metricsAfter,
    trainMs: r.trainMs,
    backend: p.trainer.backend,
    ...(steps === undefined ? {} : { steps }),
  };
  return encodeBundle(tensors, meta).byteLength;
}

/** The arm's strategy from the registry, as the aggregator builds it (no norm screen: every simulated site is honest). */
function armStrategy(o: RoundLoopOptions, participants: readonly Participant[]): Strategy {
  const { task } = o;
  return createStrategy(
    {
      ...o.strategy!,
      agents: participants.map((p) => p.id),
      trimFraction: 0.2,
      maxUpdateNormRatio: null,
      maxUpdateNorm: null,
      task: { ...task, learningRateDecay: o.learningRateDecay, sampling: task.sampling ?? 'shuffle', federated: o.federate },
    },
    silentLogger(),
  );
}

/**
 * SCAFFOLD: the server variate c that goes with the round's base, into `variates.c` (null before the
 * first aggregation: c = 0). Returns the bytes of the bundle each agent downloads (0 when there is none).
 */
async function roundControl(strategy: Strategy, global: GlobalModel, federatedNames: readonly string[], variates: Variates): Promise<number> {
  const federated = global.tensors.filter((t) => federatedNames.includes(t.name));
  const tensors = federated.map((t) => ({ name: t.name, length: elementCount(t.shape) }));
  const control = strategy.controlVariate ? await strategy.controlVariate(global.version, tensors) : null;
  variates.c = control?.tensors ?? null;
  if (!control) return 0;
  const bundle: NamedTensor[] = federated.map((t) => ({ ...t, data: control.tensors.get(t.name)! }));
  return encodeBundle(bundle, { kind: 'control', version: control.version }).byteLength;
}

/** The participant's c_i+ after its local training (shared/fl/scaffold.ts clientVariate), as its agent stores it. */
function nextClientVariate(
  global: GlobalModel,
  r: TrainResult,
  c: ReadonlyMap<string, Float32Array> | null,
  ci: ReadonlyMap<string, Float32Array> | null,
  learningRate: number,
): Map<string, Float32Array> {
  const base = new Map(global.tensors.map((t) => [t.name, t.data]));
  return new Map(
    r.tensors.map((t) => [t.name, clientVariate(base.get(t.name)!, t.data, c?.get(t.name) ?? null, ci?.get(t.name) ?? null, r.steps, learningRate)]),
  );
}

function memoryReader(id: string, weight: number, tensors: readonly { name: string; data: Float32Array }[], steps?: number): TensorBlockReader {
  const byName = new Map(tensors.map((t) => [t.name, t.data]));
  return {
    id,
    weight,
    ...(steps === undefined ? {} : { steps }),
    read: async (name, start, out) => out.set(byName.get(name)!.subarray(start, start + out.length)),
  };
}

/** One round's aggregation through the strategy, as the aggregator runs it (base and new version numbers key a server optimizer's state). */
async function aggregateWith(
  strategy: Strategy,
  global: GlobalModel,
  federatedNames: readonly string[],
  round: number,
  results: readonly { id: string; weight: number; steps?: number; tensors: readonly { name: string; data: Float32Array }[] }[],
): Promise<Map<string, Float32Array>> {
  const federated = global.tensors.filter((t) => federatedNames.includes(t.name));
  const next = new Map(federated.map((t) => [t.name, new Float32Array(elementCount(t.shape))]));
  const out = await strategy.aggregate({
    round,
    federated,
    results: results.map((r) => memoryReader(r.id, r.weight, r.tensors, r.steps)),
    failures: [],
    base: memoryReader('base', 1, global.tensors),
    versions: { base: global.version, next: global.version + 1 },
    minClients: 1,
    output: (name, start, values) => next.get(name)!.set(values, start),
  });
  return out.kind === 'weights' ? next : new Map(federated.map((t) => [t.name, t.data]));
}
