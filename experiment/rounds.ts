import { meetsTarget, scheduledLearningRate } from '../shared/fl/schedule.js';
import type { GlobalModel, Trainer } from '../training/trainer.js';
import { fedAvg } from '../shared/fl/fedavg.js';
import { resolveFederated } from '../shared/fl/federated-set.js';
import type { EvalMetrics, ModelMeta, TrainTask, UpdateMeta } from '../shared/protocol/messages.js';
import { elementCount, encodeBundle } from '../shared/bundle/tensor-bundle.js';
import type { AggregatorConfig } from '../shared/config/service-config.js';
import type { TensorBlockReader } from '../shared/fl/fedavg.js';
import { createStrategy } from '../aggregator/strategy-registry.js';
import type { Strategy } from '../aggregator/strategy.js';
import { silentLogger } from '../shared/util/logger.js';

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
  /** Each participant's model after local training, on its local test split. */
  localMetrics: Record<string, EvalMetrics>;
  sampleCounts: Record<string, number>;
  trainMs: Record<string, number>;
  /** Update bundles sent (federated) / global model bundles fetched by the participants. */
  bytesUp: number;
  bytesDown: number;
}

/** A federated arm's strategy, as the aggregator config names and tunes it. */
export type ArmStrategy = Pick<AggregatorConfig, 'strategy' | 'proxMu' | 'serverOptimizer'>;

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
  targetAccuracy: number | null;
  stopAtTarget: boolean;
  /**
   * How the global model is judged before each round and at the end; default: each participant
   * on its own local test split (the agents' evaluation). The centralized arm passes every site's split.
   */
  evaluate?: (model: GlobalModel) => Promise<Record<string, EvalMetrics>>;
  onRound?: (r: RoundRecord) => void;
}

export interface RoundLoopResult {
  rounds: RoundRecord[];
  final: GlobalModel;
  /** The final model on each participant's local test split. */
  finalMetrics: Record<string, EvalMetrics>;
  reason: string;
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
  const evaluate =
    o.evaluate ??
    (async (model: GlobalModel) => {
      const out: Record<string, EvalMetrics> = {};
      for (const p of participants) out[p.id] = await p.trainer.evaluate(model);
      return out;
    });
  let global = o.initial;
  const records: RoundRecord[] = [];
  let reason = `${o.rounds} rounds done`;
  let finalMetrics: Record<string, EvalMetrics> | null = null;
  const names = global.tensors.map((t) => t.name);
  const federatedNames = resolveFederated(o.federate, names, global.meta.headTensors);
  const strategy = o.federated && o.strategy ? armStrategy(o) : null;
  for (let round = 1; round <= o.rounds; round++) {
    const learningRate = scheduledLearningRate(o.task.learningRate, o.learningRateDecay, round - 1);
    const proxMu = strategy?.configureRound({ round, kind: 'train', available: participants.map((p) => p.id), trainRoundsBefore: round - 1 }).task.proxMu;
    const task: TrainTask = { ...o.task, learningRate, ...(proxMu === undefined ? {} : { proxMu }), federated: o.federate };
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
    record.bytesDown = modelBytes * participants.length;
    if (o.stopAtTarget && meetsTarget(record.baseMetrics, Object.keys(record.baseMetrics), o.targetAccuracy)) {
      records.push(record);
      o.onRound?.(record);
      reason = 'target accuracy reached';
      finalMetrics = record.baseMetrics;
      break;
    }
    const results = [];
    for (const p of participants) {
      const r = await p.trainer.train(global, task, federatedNames, {});
      results.push({ id: p.id, r });
      record.localMetrics[p.id] = r.metricsAfter;
      record.sampleCounts[p.id] = r.sampleCount;
      record.trainMs[p.id] = r.trainMs;
      if (o.federated) {
        const meta: UpdateMeta = {
          kind: 'update',
          agent: p.id,
          round,
          baseVersion: global.version,
          sampleCount: r.sampleCount,
          epochs: task.epochs,
          metricsBefore: record.baseMetrics[p.id] ?? r.metricsAfter,
          metricsAfter: r.metricsAfter,
          trainMs: r.trainMs,
          backend: p.trainer.backend,
        };
        record.bytesUp += encodeBundle(r.tensors, meta).byteLength;
      }
    }
    let next: Map<string, Float32Array>;
    if (results.length === 1 && !o.federated) {
      next = new Map(results[0]!.r.tensors.map((t) => [t.name, t.data]));
    } else if (strategy) {
      next = await aggregateWith(
        strategy,
        global,
        federatedNames,
        round,
        results.map(({ id, r }) => ({ id, weight: r.sampleCount, tensors: r.tensors })),
      );
    } else {
      next = fedAvg(
        results.map(({ id, r }) => ({ id, weight: r.sampleCount, tensors: new Map(r.tensors.map((t) => [t.name, t.data])) })),
        federatedNames,
      );
    }
    const meta: ModelMeta = { ...global.meta, version: global.version + 1, round, createdAt: Date.now() };
    global = { version: meta.version, sha256: '', meta, tensors: global.tensors.map((t) => ({ ...t, data: next.get(t.name) ?? t.data })) };
    record.newVersion = global.version;
    records.push(record);
    o.onRound?.(record);
  }
  finalMetrics ??= await evaluate(global);
  return { rounds: records, final: global, finalMetrics, reason };
}

/** The arm's strategy from the registry, as the aggregator builds it (no norm screen: every simulated site is honest). */
function armStrategy(o: RoundLoopOptions): Strategy {
  const { task } = o;
  return createStrategy(
    {
      ...o.strategy!,
      trimFraction: 0.2,
      maxUpdateNormRatio: null,
      maxUpdateNorm: null,
      task: { ...task, learningRateDecay: o.learningRateDecay, sampling: task.sampling ?? 'shuffle', federated: o.federate },
    },
    silentLogger(),
  );
}

function memoryReader(id: string, weight: number, tensors: readonly { name: string; data: Float32Array }[]): TensorBlockReader {
  const byName = new Map(tensors.map((t) => [t.name, t.data]));
  return { id, weight, read: async (name, start, out) => out.set(byName.get(name)!.subarray(start, start + out.length)) };
}

/** One round's aggregation through the strategy, as the aggregator runs it (base and new version numbers key a server optimizer's state). */
async function aggregateWith(
  strategy: Strategy,
  global: GlobalModel,
  federatedNames: readonly string[],
  round: number,
  results: readonly { id: string; weight: number; tensors: readonly { name: string; data: Float32Array }[] }[],
): Promise<Map<string, Float32Array>> {
  const federated = global.tensors.filter((t) => federatedNames.includes(t.name));
  const next = new Map(federated.map((t) => [t.name, new Float32Array(elementCount(t.shape))]));
  const out = await strategy.aggregate({
    round,
    federated,
    results: results.map((r) => memoryReader(r.id, r.weight, r.tensors)),
    failures: [],
    base: memoryReader('base', 1, global.tensors),
    versions: { base: global.version, next: global.version + 1 },
    minClients: 1,
    output: (name, start, values) => next.get(name)!.set(values, start),
  });
  return out.kind === 'weights' ? next : new Map(federated.map((t) => [t.name, t.data]));
}
