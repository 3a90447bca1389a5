import type { MultiSeedResults } from './results.js';
import type { Ranking, RankedModel, Stat } from './ranking.js';

/** report.md's ranking of the federated recipes and the goals (one seed: in every report; several: `<out>/report.md`). */

const pct = (x: number | null | undefined) => (x === null || x === undefined || Number.isNaN(x) ? '-' : (100 * x).toFixed(1));

/** mean ± sd in %, or the single value when there is one seed. */
const pm = (s: Stat | null) => (s === null ? '-' : s.values.length > 1 ? `${pct(s.mean)} ± ${pct(s.sd)}` : pct(s.mean));

function table(header: string[], rows: string[][]): string {
  return [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join(
    '\n',
  );
}

/** What the config set for a model, beyond the shared training: `strategy fedadam, localSteps 20`; `defaults` when nothing. */
export function describeOptions(m: Pick<RankedModel, 'options'>): string {
  const parts = Object.entries(m.options)
    .filter(([k, v]) => k !== 'federate' && k !== 'init' && v !== undefined)
    .map(([k, v]) => `${k} ${typeof v === 'object' && v !== null ? JSON.stringify(v).replace(/"/g, '') : String(v)}`);
  return parts.length ? parts.join(', ') : 'defaults';
}

export function renderRanking(ranking: Ranking, defectClass: string | null, lines: string[]): void {
  const n = ranking.seeds.length;
  lines.push('## Federated recipes ranked', '');
  lines.push(
    `Every federated model, best first by ${ranking.scoreName}${n > 1 ? `, mean ± sample standard deviation over the ${n} seeds (${ranking.seeds.join(', ')})` : ` (seed ${ranking.seeds[0]})`}; ` +
      `centralized${ranking.models.some((m) => m.kind === 'centralized-head') ? ', centralized-head (the head alone trained on the pooled images)' : ''} and local-only below as references. Probe defect: ${defectClass ?? 'defect'} recall on every cross-client probe pooled. ` +
      `Min site: the lowest accuracy over the sites' local test splits. Max decline: the largest fall of the mean site accuracy from one round to the next (worst seed).`,
    '',
  );
  lines.push(
    table(
      ['rank', 'model', 'federate', 'init', 'settings', 'external bal', 'probe defect', 'min site acc', 'local bal', 'max decline'],
      ranking.models.map((m) => [
        m.rank === null ? '-' : String(m.rank),
        m.id,
        m.kind === 'federated' ? m.federate : '-',
        m.init,
        describeOptions(m),
        pm(m.externalBalanced),
        pm(m.probeDefectRecall),
        pm(m.minSiteAccuracy),
        pm(m.localBalanced),
        m.maxDecline === null ? '-' : pct(m.maxDecline),
      ]),
    ),
    '',
  );
  const heads = ranking.models.filter((m) => (m.kind === 'federated' || m.kind === 'centralized-head') && m.federate === 'head');
  if (heads.some((m) => m.kind === 'federated')) {
    lines.push(
      'Head-only federation round by round: mean site accuracy (%) after each round, mean over the seeds (round 0: the initial model; centralized-head: the head trained on the pooled images, for reference).',
      '',
    );
    const rounds = Math.max(0, ...heads.map((h) => h.curve.length));
    lines.push(
      table(
        ['round', ...heads.map((h) => h.id)],
        Array.from({ length: rounds }, (_, k) => [String(k), ...heads.map((h) => pct(h.curve.find((p) => p.round === k)?.mean))]),
      ),
      '',
    );
  }
  lines.push('## Goals (issue 11)', '');
  for (const g of ranking.goals) lines.push(`- **${g.holds === null ? 'n/a' : g.holds ? 'PASS' : 'FAIL'}**: ${g.goal}. ${g.detail}.`);
  lines.push('');
}

/** `<out>/report.md` of a run over several seeds: the ranking, the goals and where each seed's full report is. */
export function renderMultiSeedReport(r: MultiSeedResults, defectClass: string | null, rel: (path: string) => string): string {
  const c = r.config;
  const lines: string[] = [];
  lines.push(`# ${r.name}: federated recipes over ${r.seeds.length} seed${r.seeds.length === 1 ? '' : 's'}`, '');
  lines.push(
    `Mode ${c.mode}, ${(r.durationMs / 60000).toFixed(1)} min, started ${r.startedAt}. Model ${c.model.architecture}` +
      `${c.model.architecture !== 'small-cnn' ? ` (width x${c.model.width}${c.model.batchNorm ? ', batch normalisation' : ''})` : ''}, input ${c.model.inputShape.join('x')}, ` +
      `${c.training.optimizer} lr ${c.training.learningRate} (x${c.training.learningRateDecay} per round), batch ${c.training.batchSize}, ` +
      `${c.training.localSteps ? `${c.training.localSteps} local steps` : `${c.training.epochs} local epochs`} per round, ${c.rounds} rounds. ` +
      `Each seed s is the single-seed experiment with seed, model.seed and training.shuffleSeed set to s: its own generated images, split, head init and image order; the pretrained base is shared.`,
    '',
  );
  renderRanking(r.ranking, defectClass, lines);
  lines.push('## Each seed', '');
  for (const run of r.runs) lines.push(`- seed ${run.seed}: [report](${rel(run.dir)}/report.md), ${(run.durationMs / 60000).toFixed(1)} min`);
  lines.push('');
  return lines.join('\n');
}
