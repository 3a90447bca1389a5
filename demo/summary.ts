import { join } from 'node:path';
import type { Journal } from '../aggregator/aggregator.js';
import type { DemoOptions } from './demo-options.js';

/** Megabytes (10^6 bytes) with two decimals, as the demo prints them. */
export const mb = (bytes: number) => (bytes / 1e6).toFixed(2);
const pct = (x: number | undefined) => (x === undefined ? '   -  ' : x.toFixed(3).padStart(6));

export interface WindowStats {
  /** ms in waiting-window (the line was running when the round asked for training). */
  waitedMs: number;
  /** ms paused mid-training (the line started running again). */
  pausedMs: number;
  pauses: number;
}

export interface DemoSummary {
  federation: string;
  options: DemoOptions;
  agents: string[];
  durationMs: number;
  rounds: {
    round: number;
    kind: string;
    outcome: string | null;
    baseVersion: number;
    newVersion: number | null;
    participants: string[];
    sampleCounts: Record<string, number>;
    /** Accuracy of the global model this round produced (or kept), on each agent's local test split. */
    globalAccuracy: Record<string, number>;
    globalBalancedAccuracy: Record<string, number>;
    /** Each agent's own model after local training, on its local test split. */
    localAccuracy: Record<string, number>;
    bytesUp: number;
    bytesDown: number;
    durationMs: number | null;
    trainMs: Record<string, number>;
    /** --trigger opcua: per agent, time spent waiting for its training window and paused in this round. */
    windows?: Record<string, WindowStats>;
  }[];
  /** The last aggregated version (a candidate until the release gates pass it). */
  finalModel: ModelSummary;
  /** The version the production lines run (`<root>/model/released`, aggregator/release-manager.ts); null without a model registry. */
  releasedVersion: number | null;
  releasedModel: ModelSummary | null;
}

export interface ModelSummary {
  version: number;
  dir: string;
  /** Its evaluation on each agent's local test split. */
  accuracy: Record<string, number>;
  balancedAccuracy: Record<string, number>;
}

/**
 * Per round: the model it ends with, evaluated by each agent at the start of the next round (or the
 * final evaluation round). `released`: the registry's released version (aggregator/model-registry.ts).
 */
export function buildSummary(journal: Journal, options: DemoOptions, modelsDir: string, durationMs: number, released: number | null = null): DemoSummary {
  const evalOf = (version: number) => {
    const r = journal.rounds.find((x) => x.baseVersion === version && Object.keys(x.baseMetrics).length > 0);
    return r?.baseMetrics ?? {};
  };
  const pick = (m: Record<string, { accuracy: number; balancedAccuracy: number }>, key: 'accuracy' | 'balancedAccuracy') =>
    Object.fromEntries(Object.entries(m).map(([a, v]) => [a, v[key]]));
  const finalVersion = journal.finalVersion ?? journal.currentVersion;
  const modelOf = (version: number): ModelSummary => {
    const m = evalOf(version);
    return { version, dir: join(modelsDir, `v${version}`), accuracy: pick(m, 'accuracy'), balancedAccuracy: pick(m, 'balancedAccuracy') };
  };
  const agents = [...new Set(journal.rounds.flatMap((r) => r.selected))].sort();
  return {
    federation: journal.federation,
    options,
    agents,
    durationMs,
    rounds: journal.rounds
      .filter((r) => r.kind === 'train')
      .map((r) => {
        const endVersion = r.newVersion ?? r.baseVersion;
        const m = evalOf(endVersion);
        return {
          round: r.round,
          kind: r.kind,
          outcome: r.outcome,
          baseVersion: r.baseVersion,
          newVersion: r.newVersion,
          participants: r.participants,
          sampleCounts: r.sampleCounts,
          globalAccuracy: pick(m, 'accuracy'),
          globalBalancedAccuracy: pick(m, 'balancedAccuracy'),
          localAccuracy: Object.fromEntries(
            Object.entries(r.localMetrics)
              .filter(([, v]) => v)
              .map(([a, v]) => [a, v!.accuracy]),
          ),
          bytesUp: r.bytesUp,
          bytesDown: r.bytesDown,
          durationMs: r.durationMs,
          trainMs: r.trainMs,
        };
      }),
    finalModel: modelOf(finalVersion),
    releasedVersion: released,
    releasedModel: released === null ? null : modelOf(released),
  };
}

/** The closing lines: the final candidate and the released version (what the lines run), each with its folder. */
export function renderFinalModels(summary: DemoSummary): string {
  const f = summary.finalModel;
  const r = summary.releasedModel;
  const mean = (m: Record<string, number>) => {
    const v = Object.values(m);
    return v.length ? (v.reduce((s, x) => s + x, 0) / v.length).toFixed(3) : '-';
  };
  const lines = [`final candidate v${f.version} (mean accuracy ${mean(f.accuracy)}): ${f.dir}`];
  if (!r) lines.push('released version: none (no model registry)');
  else if (r.version === f.version) lines.push(`released version v${r.version}: the final candidate passed the release gates`);
  else lines.push(`released version v${r.version} (mean accuracy ${mean(r.accuracy)}; the lines run it, v${f.version} was not released): ${r.dir}`);
  return lines.join('\n');
}

export function renderTable(summary: DemoSummary): string {
  const agents = summary.agents;
  const header = ['round', 'outcome  ', 'model', ...agents.map((a) => a.padStart(8)), '   up MB', ' down MB', ' time s'];
  const lines = [`global model accuracy on each agent's local test split, per round:`, header.join('  ')];
  for (const r of summary.rounds) {
    lines.push(
      [
        String(r.round).padStart(5),
        (r.outcome ?? '-').padEnd(9),
        `v${r.newVersion ?? r.baseVersion}`.padStart(5),
        ...agents.map((a) => pct(r.globalAccuracy[a]).padStart(8)),
        mb(r.bytesUp).padStart(8),
        mb(r.bytesDown).padStart(8),
        ((r.durationMs ?? 0) / 1000).toFixed(1).padStart(7),
      ].join('  '),
    );
  }
  return lines.join('\n');
}

export function renderWindowTable(summary: DemoSummary): string {
  const agents = summary.agents;
  const lines = [
    'time each agent waited for an idle window before training (wait s) and was paused mid-training by the line (pauses, paused s), per round:',
    ['round', ...agents.map((a) => `${a} wait s / pauses / paused s`.padStart(32))].join('  '),
  ];
  for (const r of summary.rounds) {
    if (!r.windows) continue;
    lines.push(
      [
        String(r.round).padStart(5),
        ...agents.map((a) => {
          const w = r.windows![a]!;
          return `${(w.waitedMs / 1000).toFixed(1).padStart(6)} / ${String(w.pauses).padStart(2)} / ${(w.pausedMs / 1000).toFixed(1).padStart(5)}`.padStart(32);
        }),
      ].join('  '),
    );
  }
  return lines.join('\n');
}
