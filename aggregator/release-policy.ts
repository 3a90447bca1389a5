import type { AggregatorConfig } from '../shared/config/service-config.js';
import type { ModelStage } from '../shared/protocol/mes.js';
import type { EvalMetrics } from '../shared/protocol/messages.js';

/**
 * Model release, the pure part (no I/O): the gates a candidate's evaluations must pass, and the
 * registry's stage transitions. aggregator/model-registry.ts keeps the data on disk,
 * aggregator/release-manager.ts publishes and announces what these functions decide.
 *
 *   candidate --gates pass--> validated --auto or operator--> released --newer release--> superseded
 *             --gates fail--> rejected                         released --rollback--> rolled-back
 *
 * An operator may release any stored version (the gates advise, the operator decides); a rollback
 * goes back to a version that was released before.
 */
export type ReleasePolicy = AggregatorConfig['release'];

export interface SiteReleaseMetrics {
  accuracy: number;
  balancedAccuracy: number;
  defectRecall: number | null;
  regression: number | null;
}

export type GateName = 'minBalancedAccuracy' | 'minDefectRecall' | 'maxRegression' | 'minSites';

export interface GateFailure {
  agent: string | null;
  gate: GateName;
  value: number;
  limit: number;
}

export interface GateReport {
  passed: boolean;
  /** The released version compared with (null: none had metrics). */
  against: number | null;
  sites: Record<string, SiteReleaseMetrics>;
  failures: GateFailure[];
}

/** Pooled recall of the defect classes (true positives over all defect images); null without defect images. */
export function defectRecall(metrics: EvalMetrics, defectIndices: readonly number[]): number | null {
  let hit = 0;
  let all = 0;
  for (const d of defectIndices) {
    const row = metrics.confusion[d];
    if (!row) continue;
    hit += row[d] ?? 0;
    all += row.reduce((a, b) => a + b, 0);
  }
  return all === 0 ? null : hit / all;
}

const round4 = (x: number) => Math.round(x * 10_000) / 10_000;

/** Each site's evaluation of the candidate against the policy and the released version's evaluation on the same site. */
export function checkGates(
  policy: ReleasePolicy,
  classes: readonly string[],
  candidate: Readonly<Record<string, EvalMetrics>>,
  released: { version: number; metrics: Readonly<Record<string, EvalMetrics>> } | null,
): GateReport {
  const defects = policy.defectClasses.map((c) => classes.indexOf(c)).filter((i) => i >= 0);
  const sites: Record<string, SiteReleaseMetrics> = {};
  const failures: GateFailure[] = [];
  let compared = false;
  for (const agent of Object.keys(candidate).sort()) {
    const m = candidate[agent]!;
    const before = released?.metrics[agent];
    const regression = before ? round4(before.balancedAccuracy - m.balancedAccuracy) : null;
    if (regression !== null) compared = true;
    const site: SiteReleaseMetrics = { accuracy: m.accuracy, balancedAccuracy: m.balancedAccuracy, defectRecall: defectRecall(m, defects), regression };
    sites[agent] = site;
    if (policy.minBalancedAccuracy !== null && site.balancedAccuracy < policy.minBalancedAccuracy)
      failures.push({ agent, gate: 'minBalancedAccuracy', value: site.balancedAccuracy, limit: policy.minBalancedAccuracy });
    if (policy.minDefectRecall !== null && site.defectRecall !== null && site.defectRecall < policy.minDefectRecall)
      failures.push({ agent, gate: 'minDefectRecall', value: site.defectRecall, limit: policy.minDefectRecall });
    if (policy.maxRegression !== null && regression !== null && regression > policy.maxRegression)
      failures.push({ agent, gate: 'maxRegression', value: regression, limit: policy.maxRegression });
  }
  const evaluated = Object.keys(sites).length;
  if (evaluated < policy.minSites) failures.push({ agent: null, gate: 'minSites', value: evaluated, limit: policy.minSites });
  return { passed: failures.length === 0, against: compared ? released!.version : null, sites, failures };
}

export interface VersionEntry {
  stage: ModelStage;
  round: number;
  sha256: string;
  /** The aggregator's Ed25519 signature of the version (shared/protocol/model-signature.ts signModel); null when signing is off. */
  signature: string | null;
  /** When the stage last changed, epoch ms. */
  stageAt: number;
  gates: GateReport | null;
}

export interface HistoryEntry {
  at: number;
  action: 'validated' | 'rejected' | 'released' | 'rolled-back';
  version: number;
  /** released / rolled-back: the version released before. */
  from: number | null;
  by: string;
  reason: string | null;
}

export interface RegistryData {
  released: number | null;
  releaseSeq: number;
  releasedAt: number | null;
  releasedBy: string | null;
  versions: Record<string, VersionEntry>;
  history: HistoryEntry[];
}

/** History entries kept in the registry file (the last ones; enough for a rollback years on). */
export const HISTORY_LIMIT = 1000;

export function emptyRegistry(): RegistryData {
  return { released: null, releaseSeq: 0, releasedAt: null, releasedBy: null, versions: {}, history: [] };
}

function note(data: RegistryData, e: HistoryEntry): void {
  data.history.push(e);
  if (data.history.length > HISTORY_LIMIT) data.history.splice(0, data.history.length - HISTORY_LIMIT);
}

/** A new stored version: a candidate (nothing changes when it is known already). */
export function addCandidate(data: RegistryData, v: { version: number; round: number; sha256: string; signature: string | null }, now: number): void {
  data.versions[v.version] ??= { stage: 'candidate', round: v.round, sha256: v.sha256, signature: v.signature, stageAt: now, gates: null };
}

/** The gates' verdict on a candidate: validated or rejected. Returns false when the version is no candidate (decided before). */
export function decide(data: RegistryData, version: number, report: GateReport, now: number): boolean {
  const e = data.versions[version];
  if (!e || e.stage !== 'candidate') return false;
  e.stage = report.passed ? 'validated' : 'rejected';
  e.stageAt = now;
  e.gates = report;
  note(data, { at: now, action: report.passed ? 'validated' : 'rejected', version, from: null, by: 'policy', reason: null });
  return true;
}

export type Transition = { ok: true; version: number; previous: number | null; detail: string } | { ok: false; detail: string };

/** Make `version` the released one; the one released before becomes superseded. */
export function release(data: RegistryData, version: number, by: string, reason: string | null, now: number): Transition {
  const e = data.versions[version];
  if (!e) return { ok: false, detail: `no model version ${version} in the registry` };
  if (data.released === version) return { ok: false, detail: `version ${version} is released already` };
  const previous = data.released;
  if (previous !== null && data.versions[previous]) Object.assign(data.versions[previous], { stage: 'superseded', stageAt: now });
  const gates = e.stage === 'rejected' ? ' (its gates failed; released by the operator)' : e.stage === 'candidate' ? ' (not evaluated yet)' : '';
  Object.assign(e, { stage: 'released', stageAt: now });
  setReleased(data, version, by, now);
  note(data, { at: now, action: 'released', version, from: previous, by, reason });
  return { ok: true, version, previous, detail: `version ${version} released${gates}; was ${previous ?? 'none'}` };
}

/** Go back to a version released before (default: the one released before the current one); the current one becomes rolled-back. */
export function rollback(data: RegistryData, target: number | undefined, by: string, reason: string | null, now: number): Transition {
  const current = data.released;
  if (current === null) return { ok: false, detail: 'nothing is released; nothing to roll back' };
  const version = target ?? previousRelease(data);
  if (version === null) return { ok: false, detail: `version ${current} is the only version ever released; nothing to roll back to` };
  if (version === current) return { ok: false, detail: `version ${version} is the released version` };
  const e = data.versions[version];
  if (!e || !(e.stage === 'superseded' || e.stage === 'rolled-back'))
    return { ok: false, detail: `version ${version} was never released (stage ${e?.stage ?? 'unknown'}); a rollback goes back to a version released before` };
  Object.assign(data.versions[current]!, { stage: 'rolled-back', stageAt: now });
  Object.assign(e, { stage: 'released', stageAt: now });
  setReleased(data, version, by, now);
  note(data, { at: now, action: 'rolled-back', version, from: current, by, reason });
  return { ok: true, version, previous: current, detail: `rolled back from version ${current} to version ${version}` };
}

function setReleased(data: RegistryData, version: number, by: string, now: number): void {
  data.released = version;
  data.releaseSeq++;
  data.releasedAt = now;
  data.releasedBy = by;
}

/** The latest version released before the current one that is still superseded (not rolled back from). */
function previousRelease(data: RegistryData): number | null {
  for (let i = data.history.length - 1; i >= 0; i--) {
    const h = data.history[i]!;
    if (h.action !== 'released' && h.action !== 'rolled-back') continue;
    for (const v of [h.version, h.from]) if (v !== null && v !== data.released && data.versions[v]?.stage === 'superseded') return v;
  }
  return null;
}
