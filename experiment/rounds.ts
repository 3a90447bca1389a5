import { meetsTarget, scheduledLearningRate } from '../shared/fl/schedule.js';
import type { GlobalModel, Trainer } from '../training/trainer.js';
import { fedAvg } from '../shared/fl/fedavg.js';
import { resolveFederated } from '../shared/fl/federated-set.js';
import type { EvalMetrics, ModelMeta, TrainTask, UpdateMeta } from '../shared/protocol/messages.js';
import { encodeBundle } from '../shared/bundle/tensor-bundle.js';

/**
 * The experiment's training loop, in one process: rounds of local training and (with several
 * participants) FedAvg, exactly as the aggregator and the agents run them over MQTT:
 *   - round r starts from global version r-1; every participant first evaluates it on its local
 *     test split (the seed paper's workflow), then trains `epochs` local epochs from it;
 *   - the learning rate of round r is learningRate * learningRateDecay^(r-1) (the aggregator's
 *     schedule); the optimizer starts fresh every round (only weights travel);
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

export interface RoundLoopOptions {
  initial: GlobalModel;
  rounds: number;
  task: Omit<TrainTask, 'federated'>;
  learningRateDecay: number;
  federate: 'all' | 'head';
  participants: readonly Participant[];
  /** true: participants are agents (FedAvg, bytes counted); false: one trainer, no network. */
  federated: boolean;
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
  for (let round = 1; round <= o.rounds; round++) {
    const learningRate = scheduledLearningRate(o.task.learningRate, o.learningRateDecay, round - 1);
    const task: TrainTask = { ...o.task, learningRate, federated: o.federate };
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
