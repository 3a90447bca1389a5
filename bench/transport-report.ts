import type { RoundRecord } from '../aggregator/aggregator.js';
import type { Msg } from './transport-processes.js';

/** The tables bench/transport.ts prints from its runs. MB = 10^6 bytes, MiB = 2^20. */

const MB = 1e6;
const MiB = 2 ** 20;

export interface PlainResult {
  mbps: number;
  seconds: number;
  cpu: Record<string, number>;
}

export interface FederationResult {
  agents: number;
  model: string;
  modelBytes: number;
  train: RoundRecord;
  uploads: Msg[];
  downloads: Msg[];
  aggregatorPeakMiB: number;
  aggregatorPid: number;
  brokerPeakMiB: number;
  brokerMaxRssUploadMiB: number;
  brokerBaseMiB: number;
  seconds: number;
  /** CPU seconds per GB moved, during the one-agent upload: broker, sender (agent), receiver (aggregator). */
  cpu: Record<string, number>;
}

/** Per broker: (a) before and after (b) averaged, (b)+(c) with one agent; with Aedes also 3 and many agents and a 1 M model. */
export type BenchResults = Record<
  string,
  {
    plain: PlainResult & { runs: number[] };
    one: FederationResult;
    three?: FederationResult;
    many?: FederationResult;
    small?: FederationResult;
    /** Every repetition (--repeat), in run order: the receiver ratio and its two CPU figures (s/GB); `plain` and `one` are the median's run. */
    receiverRuns?: ReceiverRun[];
  }
>;

/** Issue 14: the aggregator's CPU per GB up to its ack, at most this multiple of a plain MQTT.js subscriber's (same run). */
const RECEIVER_CPU_RATIO_GOAL = 2.5;

export interface ReceiverRun {
  ratio: number;
  /** The aggregator's CPU per GB up to its ack, s/GB. */
  aggregator: number;
  /** The plain subscriber's CPU per GB, s/GB (mean of the runs before and after). */
  plain: number;
}

/** The aggregator's CPU per GB up to its ack over the plain subscriber's, same run (the issue-14 figure). */
export function receiverRun(one: FederationResult, plain: PlainResult): ReceiverRun {
  return { ratio: one.cpu.receiverUpload! / plain.cpu.receiver!, aggregator: one.cpu.receiverUpload!, plain: plain.cpu.receiver! };
}

/** The middle value (the lower of the two middle ones for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? Number.NaN;
}

const mbps = (bytes: number, ms: number) => bytes / MB / (ms / 1000);
export const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '-');
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-');

function uploadRate(r: FederationResult): { full: number; accepted: number } {
  const u = r.uploads[0]!;
  return {
    full: mbps(Number(u.bytes), r.train.aggregatedAt! - Number(u.startedAt)),
    accepted: mbps(Number(u.bytes), Number(u.verdictAt) - Number(u.startedAt)),
  };
}

function downloadRate(r: FederationResult): { perAgent: number; total: number; seconds: number } {
  const last = Math.max(...r.downloads.map((d) => Number(d.verifiedAt)));
  const ms = last - r.train.modelStoredAt!;
  return { perAgent: mbps(r.modelBytes, ms), total: mbps(r.modelBytes * r.agents, ms), seconds: ms / 1000 };
}

function flowCheck(r: FederationResult): string {
  const sent = r.uploads.reduce((s, u) => s + Number(u.sentBytes), 0);
  const resent = r.uploads.reduce((s, u) => s + Number(u.resentChunks), 0);
  const verified = r.uploads.filter((u) => u.status === 'accepted' && u.ackSha256 === u.sha256).length;
  const waits = r.uploads.reduce((s, u) => s + Number(u.creditWaits), 0);
  const ok = sent === r.train.bytesUp && resent === 0 && verified === r.agents;
  return `${ok ? 'OK' : 'PROBLEM'}: agents published ${sent} chunk bytes, the aggregator received ${r.train.bytesUp}; ${resent} chunks resent; ${verified}/${r.agents} SHA-256 verified and accepted; flow-control waits ${waits}`;
}

function overhead(r: FederationResult): string {
  const t = r.train;
  const accepted = Math.max(...Object.values(t.acceptedAt ?? {}));
  const last = Math.max(...r.downloads.map((d) => Number(d.verifiedAt)));
  const s = (a: number, b: number) => ((b - a) / 1000).toFixed(2);
  return `${s(t.lastChunkAt!, last).padStart(7)} s = verify+spool ${s(t.lastChunkAt!, accepted)} + average+store ${s(accepted, t.modelStoredAt!)} + publish ${s(t.modelStoredAt!, t.modelPublishedAt!)} + agents fetch ${s(t.modelPublishedAt!, last)}`;
}

/** Throughput of (a), (b), (c) per broker, and the CPU each process spent per GB moved. */
export function printRates(results: BenchResults, say: (s: string) => void): void {
  say('\n(a) broker ceiling, (b) one agent -> aggregator, (c) new model -> every agent; MB = 10^6 bytes');
  say(
    `${'broker'.padEnd(10)} ${'(a) MB/s'.padStart(9)} ${'(b) MB/s'.padStart(9)} ${'(b)/(a)'.padStart(8)} ${'upload only'.padStart(12)} ${'(c) MB/s'.padStart(9)}   goal (b)/(a) >= 0.8`,
  );
  for (const [name, r] of Object.entries(results)) {
    const b = uploadRate(r.one);
    const c = downloadRate(r.one);
    say(
      `${name.padEnd(10)} ${f1(r.plain.mbps).padStart(9)} ${f1(b.full).padStart(9)} ${f2(b.full / r.plain.mbps).padStart(8)} ${f1(b.accepted).padStart(12)} ${f1(c.perAgent).padStart(9)}   ${b.full / r.plain.mbps >= 0.8 ? 'met' : 'MISSED'}`,
    );
  }
  say(
    `  (a) = the mean of a run before and one after (b): ${Object.entries(results)
      .map(([n, r]) => `${n} ${r.plain.runs.map((x) => f1(x)).join(' and ')} MB/s`)
      .join('; ')}.`,
  );
  say(
    '  (b) = update bytes / (update folded into the average at the aggregator - agent starts encoding); "upload only" ends at the agent\'s accepted ack (verified and spooled).',
  );
  say('  (c) = model bytes / (last agent has it verified - model stored); includes publishing the retained chunks to the broker.');
  say(
    "\nCPU seconds per GB moved (Linux utime + stime; the machine's other load adds noise): on a machine where each process has a core of its own, the slowest column bounds the rate",
  );
  say(
    `${'broker'.padEnd(10)} ${'run'.padEnd(22)} ${'broker'.padStart(7)} ${'sender'.padStart(7)} ${'receiver'.padStart(9)} ${'receiver to the ack'.padStart(20)}`,
  );
  for (const [name, r] of Object.entries(results)) {
    say(
      `${name.padEnd(10)} ${'(a) plain MQTT.js'.padEnd(22)} ${f2(r.plain.cpu.broker!).padStart(7)} ${f2(r.plain.cpu.sender!).padStart(7)} ${f2(r.plain.cpu.receiver!).padStart(9)}`,
    );
    say(
      `${''.padEnd(10)} ${'(b) agent->aggregator'.padEnd(22)} ${f2(r.one.cpu.broker!).padStart(7)} ${f2(r.one.cpu.sender!).padStart(7)} ${f2(r.one.cpu.receiver!).padStart(9)} ${f2(r.one.cpu.receiverUpload!).padStart(20)}`,
    );
  }
  say('  receiver to the ack: the aggregator until the update is verified and spooled (without FedAvg and the new model).');
  for (const [name, r] of Object.entries(results)) {
    const runs = r.receiverRuns ?? [receiverRun(r.one, r.plain)];
    const ratios = runs.map((x) => x.ratio);
    const ratio = median(ratios);
    const each = runs.map((x) => `${f2(x.ratio)} (${f2(x.aggregator)} / ${f2(x.plain)})`).join(', ');
    const spread =
      runs.length > 1
        ? ` (median of ${runs.length} runs, min ${f2(Math.min(...ratios))}, max ${f2(Math.max(...ratios))}; per run, ratio (aggregator / plain s/GB): ${each})`
        : '';
    say(
      `  ${name}: aggregator receiver / plain subscriber CPU per GB: ${f2(ratio)}${spread} (goal <= ${RECEIVER_CPU_RATIO_GOAL}: ${ratio <= RECEIVER_CPU_RATIO_GOAL ? 'met' : 'MISSED'})`,
    );
  }
}

/** Aedes with 1, 3 and `many` agents: peak memory against the goals, flow control, and the round overhead by model size. */
export function printScaling(aedes: Required<Omit<BenchResults[string], 'receiverRuns'>>, many: number, bigLabel: string, say: (s: string) => void): void {
  const goal = (2 * aedes.one.modelBytes) / MiB + 300;
  say(`\npeak RSS, MiB (Aedes; goal for the aggregator: <= 2 x model + 300 MiB = ${goal.toFixed(0)} MiB, and ${many} agents within 10% of 3)`);
  say(
    `${'agents'.padStart(6)} ${'aggregator'.padStart(11)} ${'broker(upload)'.padStart(15)} ${'broker(peak)'.padStart(13)} ${'agent upload'.padStart(13)} ${'agent download'.padStart(15)} ${'all N MB/s up'.padStart(14)} ${'N MB/s down'.padStart(12)}`,
  );
  for (const r of [aedes.one, aedes.three, aedes.many]) {
    const upMax = Math.max(...r.uploads.map((u) => Number(u.peakMiB)));
    const downMax = Math.max(...r.downloads.map((d) => Number(d.peakMiB)));
    const firstStart = Math.min(...r.uploads.map((u) => Number(u.startedAt)));
    const upAll = mbps(r.modelBytes * r.agents, Math.max(...r.uploads.map((u) => Number(u.verdictAt))) - firstStart);
    say(
      `${String(r.agents).padStart(6)} ${f1(r.aggregatorPeakMiB).padStart(11)} ${f1(r.brokerMaxRssUploadMiB).padStart(15)} ${f1(r.brokerPeakMiB).padStart(13)} ${f1(upMax).padStart(13)} ${f1(downMax).padStart(15)} ${f1(upAll).padStart(14)} ${f1(downloadRate(r).total).padStart(12)}`,
    );
  }
  const ratio = aedes.many.aggregatorPeakMiB / aedes.three.aggregatorPeakMiB;
  say(
    `  aggregator: ${many} agents / 3 agents = ${f2(ratio)} (goal within 10%: ${Math.abs(ratio - 1) <= 0.1 ? 'met' : 'MISSED'}); max ${f1(Math.max(aedes.three.aggregatorPeakMiB, aedes.many.aggregatorPeakMiB))} MiB vs goal ${goal.toFixed(0)} MiB: ${Math.max(aedes.three.aggregatorPeakMiB, aedes.many.aggregatorPeakMiB) <= goal ? 'met' : 'MISSED'}`,
  );
  say(
    `  broker(upload): its highest RSS while the updates were arriving (it holds the retained base model, ${(aedes.one.modelBytes / MiB).toFixed(0)} MiB, from the start); broker(peak) also the new one.`,
  );
  say(`\nflow control, ${many} agents sending at once: ${flowCheck(aedes.many)}`);
  say(`flow control, 3 agents: ${flowCheck(aedes.three)}`);
  say(`\nround overhead, last update chunk received -> new model verified by every agent (3 agents, Aedes):`);
  say(`  ${'1 M params'.padEnd(14)} ${overhead(aedes.small)}`);
  say(`  ${bigLabel.padEnd(14)} ${overhead(aedes.three)}`);
}
