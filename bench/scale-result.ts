import type { Journal, RoundRecord } from '../aggregator/aggregator.js';
import type { Msg } from './transport-processes.js';

/**
 * What one bench:scale configuration measured, derived from the aggregator's journal (round
 * timeline, participants, bytes) and the agent hosts' reports (model version verified per agent,
 * resent chunks). Pure: no processes, no I/O.
 */

export interface ScaleConfig {
  agents: number;
  /** Update (and model) size, MB (10^6 bytes) of float32 weights. */
  sizeMB: number;
  nodes: number;
  rounds: number;
  agentsPerProcess: number;
}

/** Seconds from the round's start, each the moment the last agent got there. */
export interface Phases {
  /** Every selected agent has fetched and verified the round's base model. */
  baseFetched: number;
  /** The aggregator has the last update chunk. */
  lastChunk: number;
  /** Every update verified (SHA-256) and spooled. */
  allAccepted: number;
  /** FedAvg done, the new model stored (fsynced). */
  modelStored: number;
  /** All chunks of the new model published (retained). */
  modelPublished: number;
  /** Every agent has fetched and verified the new model (the round's end). */
  newVerified: number;
}

export interface RoundMeasure {
  round: number;
  seconds: number;
  phases: Phases;
  selected: number;
  /** Selected agents whose update was not aggregated. */
  lost: number;
  /** Agents that verified the new model. */
  verified: number;
  resentChunks: number;
  refusals: number;
  bytesUp: number;
  /** Model bytes the agents fetched in the round: the base and the new model, by every agent. */
  bytesDown: number;
}

/** Per process (or group of processes): peak RSS (VmHWM), MiB; CPU seconds; CPU seconds per GB. */
export interface ProcessMeasure {
  peakMiB: number;
  cpuS: number;
  cpuSPerGB: number;
}

export interface ScaleResult extends ScaleConfig {
  modelBytes: number;
  updateBytes: number;
  hostCount: number;
  roundsMeasured: RoundMeasure[];
  meanRoundS: number;
  /** Bytes one round moves: every agent fetches the base and the new model and sends its update. */
  bytesPerRound: number;
  meanPhases: Phases;
  lost: number;
  resentChunks: number;
  refusals: number;
  /** GB (10^9) of updates received and of models fetched in the measured span (first round's start to the last round's end). */
  gbUp: number;
  gbDown: number;
  /** Model bytes the agents downloaded over the whole run, as they counted them (EdgeAgent.transferred): a cache hit downloads nothing. */
  agentsDownloadedBytes: number;
  aggregator: ProcessMeasure;
  /** Each broker node; CPU per GB of everything moved (up + down), all nodes together in `brokersCpuSPerGB`. */
  brokers: ProcessMeasure[];
  /**
   * Each broker node's highest sampled RSS in the first round's phases, MiB: [to the base fetched
   * by all, to the last update chunk, to the new model published, to it verified by all]. Says
   * which traffic a broker's peak comes from.
   */
  brokerRssByPhaseMiB: number[][];
  /**
   * The aggregator's highest sampled RSS, MiB: [from its start to the first round's start, then the
   * four phases of brokerRssByPhaseMiB]. Says whether its peak comes from the uploads in flight or
   * from FedAvg (docs/scaling.md, "The aggregator's memory at small updates").
   */
  aggregatorRssByPhaseMiB: number[];
  brokersCpuSPerGB: number;
  redis: ProcessMeasure | null;
  /** Agent hosts: the largest peak of one host; CPU of all hosts together. */
  agentHosts: ProcessMeasure;
  wallS: number;
}

type Verified = { agent: string; version: number; at: number };

const max = (xs: number[]) => xs.reduce((m, x) => Math.max(m, x), -Infinity);

/** The train rounds of a journal, measured against the agents' reports. */
export function measureRounds(journal: Journal, hostMessages: Msg[], modelBytes: number): RoundMeasure[] {
  const verified = hostMessages.filter((m) => m.type === 'verified') as unknown as Verified[];
  const done = hostMessages.filter((m) => m.type === 'round-done');
  const trains = journal.rounds.filter((r) => r.kind === 'train');
  return trains.map((r) => measureRound(r, verified, done, modelBytes));
}

function measureRound(r: RoundRecord, verified: Verified[], done: Msg[], modelBytes: number): RoundMeasure {
  const start = r.startedAt;
  const base = verified.filter((v) => v.version === r.baseVersion && v.at >= start && r.selected.includes(v.agent));
  const next = r.newVersion === null ? [] : verified.filter((v) => v.version === r.newVersion);
  const end = next.length ? max(next.map((v) => v.at)) : Number.NaN;
  const s = (t: number | null | undefined) => (t === null || t === undefined ? Number.NaN : (t - start) / 1000);
  const accepted = Object.values(r.acceptedAt ?? {});
  return {
    round: r.round,
    seconds: s(end),
    phases: {
      baseFetched: s(base.length ? max(base.map((v) => v.at)) : null),
      lastChunk: s(r.lastChunkAt),
      allAccepted: s(accepted.length ? max(accepted) : null),
      modelStored: s(r.modelStoredAt),
      modelPublished: s(r.modelPublishedAt),
      newVerified: s(end),
    },
    selected: r.selected.length,
    lost: r.selected.filter((a) => !r.participants.includes(a)).length,
    verified: new Set(next.map((v) => v.agent)).size,
    resentChunks: done.filter((d) => d.round === r.round).reduce((n, d) => n + Number(d.resentChunks ?? 0), 0),
    refusals: r.refusals?.length ?? r.failures.length,
    bytesUp: r.bytesUp,
    bytesDown: (base.length + next.length) * modelBytes,
  };
}

export function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : Number.NaN;
}

export function meanPhases(rounds: RoundMeasure[]): Phases {
  const keys = ['baseFetched', 'lastChunk', 'allAccepted', 'modelStored', 'modelPublished', 'newVerified'] as const;
  return Object.fromEntries(keys.map((k) => [k, mean(rounds.map((r) => r.phases[k]))])) as unknown as Phases;
}

/** Least squares y = a + b x over the points; NaN with fewer than two distinct x. */
export function leastSquares(points: { x: number; y: number }[]): { a: number; b: number } {
  const n = points.length;
  const mx = mean(points.map((p) => p.x));
  const my = mean(points.map((p) => p.y));
  const sxx = points.reduce((s, p) => s + (p.x - mx) ** 2, 0);
  if (n < 2 || sxx === 0) return { a: Number.NaN, b: Number.NaN };
  const b = points.reduce((s, p) => s + (p.x - mx) * (p.y - my), 0) / sxx;
  return { a: my - b * mx, b };
}
