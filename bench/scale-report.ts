import { leastSquares, type ScaleResult } from './scale-result.js';

/** The tables bench/scale.ts prints: a row per configuration as it finishes, then goals, ratios and the projection to 1,000 sites. */

const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '-');
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-');
const f3 = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : '-');
const pct = (x: number) => `${x >= 0 ? '+' : ''}${f1(x * 100)} %`;

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
const COLUMNS: [string, number][] = [
  ['agents', 6],
  ['MB', 5],
  ['nodes', 5],
  ['round s', 8],
  ['GB/round', 8],
  ['agg MiB', 8],
  ['broker MiB', 10],
  ['redis MiB', 9],
  ['host MiB', 8],
  ['agg s/GB', 8],
  ['brokers s/GB', 12],
  ['redis s/GB', 10],
  ['hosts s/GB', 10],
  ['lost', 4],
  ['resent', 6],
  ['wall s', 7],
];

function line(cells: string[]): string {
  return cells.map((c, i) => c.padStart(COLUMNS[i]![1])).join(' ');
}

export function printRowHeader(say: (s: string) => void): void {
  say('\nper configuration (MB = 10^6 bytes, GB = 10^9; MiB = peak RSS; s/GB = CPU seconds per GB moved, see docs/scaling.md):');
  say(line(COLUMNS.map(([h]) => h)));
}

function row(r: ScaleResult): string {
  return line([
    String(r.agents),
    String(r.sizeMB),
    String(r.nodes),
    f1(r.meanRoundS),
    f3(r.bytesPerRound / 1e9),
    f1(r.aggregator.peakMiB),
    f1(Math.max(...r.brokers.map((b) => b.peakMiB))),
    r.redis ? f1(r.redis.peakMiB) : '-',
    f1(r.agentHosts.peakMiB),
    f2(r.aggregator.cpuSPerGB),
    f2(r.brokersCpuSPerGB),
    r.redis ? f2(r.redis.cpuSPerGB) : '-',
    f2(r.agentHosts.cpuSPerGB),
    String(r.lost),
    String(r.resentChunks),
    f1(r.wallS),
  ]);
}

function phases(r: ScaleResult): string {
  const p = r.meanPhases;
  // 0: no sample fell in a phase shorter than the sampling interval.
  const mib = (m: number) => (m > 0 ? m.toFixed(0) : '-');
  const rss = r.brokerRssByPhaseMiB.map((node) => node.map(mib).join(' / ')).join('; ');
  return (
    `    s from round start, last agent: base fetched ${f1(p.baseFetched)}, last update chunk ${f1(p.lastChunk)}, all verified+spooled ${f1(p.allAccepted)}, FedAvg+stored ${f1(p.modelStored)}, published ${f1(p.modelPublished)}, new model verified by all ${f1(p.newVerified)}\n` +
    `    broker max RSS MiB by phase (base fetch / uploads / FedAvg and publish / new model fetch), each node: ${rss}\n` +
    `    aggregator max RSS MiB (before the round / base fetch / uploads / FedAvg and publish / new model fetch): ${r.aggregatorRssByPhaseMiB.map(mib).join(' / ')}`
  );
}

export function printRow(r: ScaleResult, say: (s: string) => void): void {
  say(row(r));
  say(phases(r));
}

/** Configurations of one model size and node count, by agents. */
function groups(results: ScaleResult[]): { label: string; rs: ScaleResult[] }[] {
  const by = new Map<string, ScaleResult[]>();
  for (const r of results) {
    const key = `${r.sizeMB} MB, ${r.nodes} node${r.nodes > 1 ? 's' : ''}`;
    by.set(key, [...(by.get(key) ?? []), r]);
  }
  return [...by].map(([label, rs]) => ({ label, rs: rs.sort((a, b) => a.agents - b.agents) }));
}

export function printFinal(results: ScaleResult[], say: (s: string) => void): void {
  say('\nall configurations:');
  say(line(COLUMNS.map(([h]) => h)));
  for (const r of results) say(row(r));
  const lost = results.reduce((s, r) => s + r.lost, 0);
  say(`\nlost updates (selected, not aggregated), all configurations: ${lost} (goal 0: ${lost === 0 ? 'met' : 'MISSED'})`);
  say(`resent update chunks, all configurations: ${results.reduce((s, r) => s + r.resentChunks, 0)}`);
  for (const { label, rs } of groups(results)) {
    const sizes = [...new Set(rs.map((r) => r.agents))];
    if (sizes.length < 2) continue;
    // With --repeat, each end has one result per pass: the verdicts take the medians.
    const lo = rs.filter((r) => r.agents === sizes[0]);
    const hi = rs.filter((r) => r.agents === sizes.at(-1));
    const loRss = median(lo.map((r) => r.aggregator.peakMiB));
    const hiRss = median(hi.map((r) => r.aggregator.peakMiB));
    const rss = hiRss / loRss - 1;
    const time = median(hi.map((r) => r.meanRoundS)) / median(lo.map((r) => r.meanRoundS));
    const bytes = hi[0]!.bytesPerRound / lo[0]!.bytesPerRound;
    const of = lo.length > 1 ? ` (medians of ${lo.length} passes)` : '';
    say(`\n${label}, ${sizes[0]} -> ${sizes.at(-1)} agents${of}:`);
    say(
      `  aggregator peak RSS ${f1(loRss)} -> ${f1(hiRss)} MiB: ${pct(rss)} (goal < 10 %: ${rss < 0.1 ? 'met' : 'MISSED'})${
        lo.length > 1 ? `; per pass: ${lo.map((l, i) => (hi[i] ? pct(hi[i].aggregator.peakMiB / l.aggregator.peakMiB - 1) : '-')).join(', ')}` : ''
      }`,
    );
    say(
      `  round time x${f2(time)}, bytes per round x${f2(bytes)}: ratio ${f2(time / bytes)} (goal <= 1, round time grows no faster than bytes: ${time <= bytes ? 'met' : 'MISSED'})`,
    );
    const t = leastSquares(rs.map((r) => ({ x: r.agents, y: r.meanRoundS })));
    const b = leastSquares(rs.map((r) => ({ x: r.agents, y: Math.max(...r.brokers.map((x) => x.peakMiB)) })));
    const a = leastSquares(rs.map((r) => ({ x: r.agents, y: r.aggregator.peakMiB })));
    const at = (fit: { a: number; b: number }) => fit.a + fit.b * 1000;
    say(`  least squares over ${rs.length} points (N = agents): round s = ${f2(t.a)} + ${f2(t.b)} N -> ${f1(at(t))} s at N = 1000`);
    say(
      `    broker node peak MiB = ${f1(b.a)} + ${f2(b.b)} N -> ${f1(at(b))} MiB; aggregator peak MiB = ${f1(a.a)} + ${f2(a.b)} N -> ${f1(at(a))} MiB at N = 1000`,
    );
    // CPU per round of the central services: on a machine with a core per process, the busiest one bounds the round.
    const perRound = (pick: (r: ScaleResult) => number) => leastSquares(rs.map((r) => ({ x: r.agents, y: pick(r) / r.rounds })));
    const bc = perRound((r) => Math.max(...r.brokers.map((x) => x.cpuS)));
    const ac = perRound((r) => r.aggregator.cpuS);
    say(
      `    CPU-s per round: busiest broker node = ${f2(bc.a)} + ${f3(bc.b)} N -> ${f1(at(bc))}; aggregator = ${f2(ac.a)} + ${f3(ac.b)} N -> ${f1(at(ac))} at N = 1000`,
    );
    say(`    bytes per round at N = 1000: ${f1(((hi[0]!.bytesPerRound / hi[0]!.agents) * 1000) / 1e9)} GB`);
  }
}
