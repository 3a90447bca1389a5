import { packMsg } from '../shared/protocol/wire-codec.js';
import { PROTOCOL_VERSION, type BnStatsMsg, type EvalMetrics, type EvalReportMsg } from '../shared/protocol/messages.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { Transport } from '../shared/transport/transport.js';
import type { LayerMoments } from '../shared/fl/bn-statistics.js';

/** Who reports, on which round, about which base model, after downloading how many bytes. */
export interface ReportOrigin {
  agent: string;
  round: number;
  baseVersion: number;
  downloadedBytes: number;
}

/** The global model's metrics on the local test split, sent at once (the seed paper's workflow). */
export async function publishEvalReport(transport: Transport, topics: Topics, origin: ReportOrigin, metrics: EvalMetrics): Promise<void> {
  const report: EvalReportMsg = { v: PROTOCOL_VERSION, type: 'eval', ...origin, metrics };
  await transport.publish(topics.update(origin.round, origin.agent), packMsg(report), { qos: 1 });
}

/** A statistics round's answer: each BN layer's input moments over the local training images. */
export async function publishBnStats(transport: Transport, topics: Topics, origin: ReportOrigin, moments: readonly LayerMoments[]): Promise<void> {
  const msg: BnStatsMsg = {
    v: PROTOCOL_VERSION,
    type: 'bn-stats',
    ...origin,
    layers: moments.map((m) => ({ layer: m.layer, count: m.count, mean: [...m.mean], m2: [...m.m2] })),
  };
  await transport.publish(topics.update(origin.round, origin.agent), packMsg(msg), { qos: 1 });
}
