import type { EvalMetrics } from '../shared/protocol/messages.js';
import type { ExperimentResults, ModelResult } from './results.js';
import { foreignDetection } from './findings.js';
import type { ReportPictures } from './report-pictures.js';
import { curve } from './ranking.js';
import { renderRanking } from './ranking-report.js';

export { curve };

/** report.md from results.json's content: Table-I-style comparison, per-site and probe tables, learning curves, findings, confusion matrices. */

const pct = (x: number | null | undefined) => (x === null || x === undefined || Number.isNaN(x) ? '-' : (100 * x).toFixed(1));
const mb = (bytes: number) => (bytes / 1e6).toFixed(2);

function table(header: string[], rows: string[][]): string {
  return [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join(
    '\n',
  );
}

function recall(m: EvalMetrics | undefined, cls: number): number | null {
  return m && cls >= 0 ? (m.recall[cls] ?? null) : null;
}

/** What the sections share: the config, the defect class index and the set names. */
interface ReportView {
  r: ExperimentResults;
  defect: number;
  sites: string[];
  probes: string[];
  hasExternal: boolean;
  /** The PNG charts written next to report.md (experiment/report-pictures.ts), when there are any. */
  pictures: ReportPictures | null;
}

export function renderReport(r: ExperimentResults, rel: (path: string) => string, pictures: ReportPictures | null = null): string {
  const v: ReportView = {
    r,
    defect: r.defectClass === null ? -1 : r.classes.indexOf(r.defectClass),
    sites: Object.keys(r.data.sites),
    probes: Object.keys(r.data.probes),
    hasExternal: r.data.external !== null,
    pictures,
  };
  const lines: string[] = [];
  introSection(v, rel, lines);
  dataSection(v, lines);
  tableOneSection(v, lines);
  renderRanking(r.ranking, r.defectClass, lines);
  perSiteSections(v, lines);
  learningCurvesSection(v, lines);
  closingSections(v, rel, lines);
  return lines.join('\n');
}

/** Title, run settings and the pretrained base. */
function introSection({ r }: ReportView, rel: (path: string) => string, lines: string[]): void {
  const c = r.config;
  lines.push(`# ${r.name}: centralized vs local-only vs federated`, '');
  lines.push(
    `Mode ${r.mode}, tfjs backend ${r.backend}, ${(r.durationMs / 60000).toFixed(1)} min, started ${r.startedAt}. Model ${c.model.architecture}` +
      `${c.model.architecture !== 'small-cnn' ? ` (width x${c.model.width}${c.model.batchNorm ? ', batch normalisation after every convolution, its moving statistics averaged by FedAvg like every weight' : ''})` : ''}, input ${c.model.inputShape.join('x')}, ${c.training.optimizer} lr ${c.training.learningRate} ` +
      `(x${c.training.learningRateDecay} per round), batch ${c.training.batchSize}, ${c.training.localSteps ? `${c.training.localSteps} local steps` : `${c.training.epochs} local epochs`} per round, ${c.training.sampling} sampling, optimizer state reset every round, ${c.rounds} rounds` +
      ` (per-arm overrides: ${
        Object.entries(c.arms)
          .filter(([, v]) => v && Object.keys(v).length > 0)
          .map(([k, v]) => `${k} ${JSON.stringify(v)}`)
          .join(', ') || 'none'
      }).` +
      ` Seeds: data ${c.data.source === 'synthetic' ? (c.data.seed ?? c.seed) : '-'}, split ${c.splitSeed ?? c.seed}, head init ${c.model.seed}, shuffle ${c.training.shuffleSeed}.`,
    '',
  );
  if (r.pretrained) {
    const info = r.pretrained.info as { metrics?: EvalMetrics; epochs?: number; data?: string } | null;
    lines.push(
      `Common initial weights (every arm but federated-random): ${r.pretrained.reused ? 'reused' : 'trained here'} from \`${rel(r.pretrained.dir)}\`` +
        `${info?.metrics ? `, a ${c.model.architecture} pretrained ${info.epochs ?? '?'} epochs on reference images of other products, defects and objects (${pct(info.metrics.accuracy)}% on its held-out reference images)` : ''}` +
        `, with a new seeded head (the paper: ImageNet weights, which cannot be downloaded here).`,
      '',
    );
  }
  if (r.selfSupervised) {
    const s = r.selfSupervised;
    lines.push(
      `Then adapted to the sites by the self-supervised site pass (rotation pretext on each site's own unlabelled training images, weights averaged, ${s.settings.rounds} rounds x ${s.settings.epochs} epochs, ${pct(s.finalPretextAccuracy)}% pretext accuracy): the common start of the pretrained arms (\`${rel(s.dir)}\`).`,
      '',
    );
  }
}

/** Images per class of every set. */
function dataSection({ r, sites, probes }: ReportView, lines: string[]): void {
  lines.push('Data (images per class, ' + r.classes.join(' / ') + '):', '');
  lines.push(
    table(
      ['set', 'train', 'test'],
      [
        ...sites.map((s) => [s, r.data.sites[s]!.train.join(' / '), r.data.sites[s]!.test.join(' / ')]),
        ...(r.data.external ? [['external (never trained on)', '-', r.data.external.perClass.join(' / ')]] : []),
        ...probes.map((p) => [
          `probe ${p}${r.data.probes[p]!.product ? ` (${r.data.probes[p]!.product}'s product, ${r.data.probes[p]!.defectOf}'s defect)` : ''}`,
          '-',
          String(r.data.probes[p]!.count),
        ]),
      ],
    ),
    '',
  );
}

/** Table I: every model on every test set. */
function tableOneSection({ r, defect, probes, hasExternal }: ReportView, lines: string[]): void {
  lines.push('## Table I: every model on every test set', '');
  lines.push(
    `Accuracy (acc), balanced accuracy (bal) and ${r.defectClass ?? 'defect'} recall (defect) in %. Local test: every site's own test split, pooled. ` +
      `Rounds to target: the first round after which the model reaches ${r.targetAccuracy ?? '-'} accuracy on every site's local test split ` +
      `(local-only: on its own site's; 0: the initial model already does). Bytes: model updates sent and global models fetched by all agents ` +
      `(centralized: the training images that would have to move). Time: local training per epoch and site (as the trainer reports it: ` +
      `loading the model, the epoch, the evaluation after it).`,
    '',
  );
  const header = ['model', 'local acc', 'local bal', 'local defect'];
  if (hasExternal) header.push('external acc', 'external bal');
  if (probes.length) header.push('probes defect');
  header.push('rounds to target', 'up MB / round', 'total MB', 's / local epoch');
  lines.push(
    table(
      header,
      r.models.map((m) => {
        const row = [
          `${m.id}${m.arm.startsWith('federated') ? ` (${m.init}, ${m.federate}${m.batchNorm && m.batchNorm !== 'average' ? `, BN ${m.batchNorm}` : ''})` : ''}`,
          pct(m.eval['local-test']?.accuracy),
          pct(m.eval['local-test']?.balancedAccuracy),
          pct(recall(m.eval['local-test'], defect)),
        ];
        if (hasExternal) row.push(pct(m.eval.external?.accuracy), pct(m.eval.external?.balancedAccuracy));
        if (probes.length) row.push(pct(recall(m.eval.probes, defect)));
        row.push(
          m.roundsToTarget === null ? `not in ${m.roundsRun}` : String(m.roundsToTarget),
          m.arm.startsWith('federated') ? mb(m.bytes.upPerRound) : '-',
          m.arm.startsWith('centralized') ? `${mb(m.bytes.imagesMoved)} (images)` : m.arm.startsWith('federated') ? mb(m.bytes.total) : '0',
          m.msPerLocalEpoch === null ? '-' : (m.msPerLocalEpoch / 1000).toFixed(2),
        );
        return row;
      }),
    ),
    '',
  );
}

/** Each site's local test split, the cross-client probes and each site's foreign defects. */
function perSiteSections({ r, defect, sites, probes, pictures }: ReportView, lines: string[]): void {
  lines.push("## Accuracy on each site's local test split", '');
  if (pictures) lines.push(`![accuracy on each site's local test split](${pictures.perSiteAccuracy})`, '');
  if (pictures?.perSiteDefectRecall) lines.push(`![${r.defectClass} recall on each site's local test split](${pictures.perSiteDefectRecall})`, '');
  lines.push(
    table(
      ['model', ...sites.map((s) => `${s} acc`), ...(defect >= 0 ? sites.map((s) => `${s} defect`) : [])],
      r.models.map((m) => [
        m.id,
        ...sites.map((s) => pct(m.eval[`site:${s}`]?.accuracy)),
        ...(defect >= 0 ? sites.map((s) => pct(recall(m.eval[`site:${s}`], defect))) : []),
      ]),
    ),
    '',
  );

  if (defect >= 0 && probes.length) {
    lines.push("## Other clients' defects", '');
    lines.push(`${r.defectClass} recall in % on each cross-client probe (a site's product with another site's defect, the paper's figures 13-14):`, '');
    lines.push(
      table(
        ['model', ...probes],
        r.models.map((m) => [m.id, ...probes.map((p) => pct(recall(m.eval[`probe:${p}`], defect)))]),
      ),
      '',
    );
  }
  if (defect >= 0) {
    const siteList = sites.map((id) => ({ id, dir: r.data.sites[id]!.dir }));
    const probeList = probes.map((id) => ({ id, dir: r.data.probes[id]!.dir, product: r.data.probes[id]!.product, defectOf: r.data.probes[id]!.defectOf }));
    lines.push(
      `${r.defectClass} recall in % on each site's *foreign* defects (the defect images of the other sites' test splits, and the probes whose defect is not that site's): what a site gains from the others; in brackets the false alarms, the other sites' non-${r.defectClass} test images called ${r.defectClass} (a model calling everything ${r.defectClass} has 100 % recall and 100 % false alarms).`,
      '',
    );
    lines.push(
      table(
        ['model', ...sites.map((s) => `foreign to ${s}`)],
        r.models.map((m) => [
          m.id,
          ...sites.map((s) => {
            const d = foreignDetection(m, s, siteList, probeList, defect);
            return `${pct(d.recall)} (${pct(d.falseAlarm)})`;
          }),
        ]),
      ),
      '',
    );
  }
}

/** Mean (min) accuracy over the judged sites after each round. */
function learningCurvesSection(v: ReportView, lines: string[]): void {
  const { r, pictures } = v;
  lines.push('## Learning curves', '');
  if (pictures) lines.push(`![learning curves](${pictures.learningCurves})`, '');
  lines.push(
    "Mean (min) accuracy over the sites' local test splits of the model after each round (round 0: the initial model); local-only models on their own site.",
    '',
  );
  const curves = r.models.map((m) => ({ id: m.id, points: curve(m) }));
  const maxRound = Math.max(0, ...curves.flatMap((x) => x.points.map((p) => p.round)));
  lines.push(
    table(
      ['round', ...curves.map((x) => x.id)],
      Array.from({ length: maxRound + 1 }, (_, k) => [
        String(k),
        ...curves.map((x) => {
          const p = x.points.find((q) => q.round === k);
          return p ? `${pct(p.mean)} (${pct(p.min)})` : '';
        }),
      ]),
    ),
    '',
  );
  heldOutCurvesSection(v, lines);
}

/** The model after round k (k = 0: the initial model) on a held-out set: from the next round's watchMetrics, or the final evaluation. */
export function heldOutCurve(m: ModelResult, setId: string, value: (e: EvalMetrics) => number | null): (number | null)[] {
  if (!m.rounds.some((r) => r.watchMetrics?.[setId])) return [];
  const points = m.rounds.map((r) => (r.watchMetrics?.[setId] ? value(r.watchMetrics[setId]) : null));
  const final = m.eval[setId];
  if (m.rounds.at(-1)?.newVersion != null && final) points.push(value(final));
  return points;
}

/** External balanced accuracy and probe defect recall after each round (when the rounds were watched). */
function heldOutCurvesSection({ r, defect }: ReportView, lines: string[]): void {
  const sets: [string, string, (e: EvalMetrics) => number | null][] = [
    ['external', 'balanced accuracy on the external set', (e) => e.balancedAccuracy],
    ['probes', `${r.defectClass ?? 'defect'} recall on the cross-client probes`, (e) => recall(e, defect)],
  ];
  for (const [id, what, value] of sets) {
    const curves = r.models.map((m) => ({ id: m.id, points: heldOutCurve(m, id, value) })).filter((x) => x.points.length > 0);
    if (curves.length === 0) continue;
    const rounds = Math.max(...curves.map((x) => x.points.length));
    lines.push(`The model after each round (round 0: the initial model), ${what}:`, '');
    lines.push(
      table(
        ['round', ...curves.map((x) => x.id)],
        Array.from({ length: rounds }, (_, k) => [String(k), ...curves.map((x) => (x.points[k] == null ? '' : pct(x.points[k]!)))]),
      ),
      '',
    );
  }
}

/** The findings, the confusion matrices and where the models are. */
function closingSections({ r, sites }: ReportView, rel: (path: string) => string, lines: string[]): void {
  lines.push("## The paper's findings, checked", '');
  for (const f of r.findings) lines.push(`- **${f.holds === null ? 'n/a' : f.holds ? 'holds' : 'does not hold'}**: ${f.claim}. ${f.detail}.`);
  lines.push('');

  lines.push('## Confusion matrices', '');
  const setIds = ['local-test', ...sites.map((s) => `site:${s}`), 'external', 'probes'].filter((id) => r.models.some((m) => m.confusionPngs[id]));
  lines.push(
    table(
      ['model', ...setIds],
      r.models.map((m) => [m.id, ...setIds.map((id) => (m.confusionPngs[id] ? `[png](${m.confusionPngs[id]})` : '-'))]),
    ),
    '',
  );
  const fed = r.models.find((m) => m.id === 'federated-all');
  if (fed?.confusionPngs['local-test']) lines.push(`![federated-all on the local test splits](${fed.confusionPngs['local-test']})`, '');

  lines.push('## Models', '');
  for (const m of r.models) lines.push(`- ${m.id}: \`${rel(m.modelDir)}\` (${m.reason}); \`npx fedline classify --model ${rel(m.modelDir)} IMAGE...\``);
  lines.push('');
}
