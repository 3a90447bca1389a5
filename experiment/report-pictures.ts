import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { renderBarChart, renderLineChart } from './chart-png.js';
import type { ExperimentResults } from './results.js';
import { curve } from './report.js';

/** The report's pictures, by file name under the experiment's out folder (report.md links them). */
export interface ReportPictures {
  learningCurves: string;
  perSiteAccuracy: string;
  perSiteDefectRecall: string | null;
}

/** Learning curves and per-site comparisons as PNG images, written next to report.md. */
export async function writeReportPictures(r: ExperimentResults, out: string): Promise<ReportPictures> {
  const sites = Object.keys(r.data.sites);
  const defect = r.defectClass === null ? -1 : r.classes.indexOf(r.defectClass);
  const subtitle = `${r.config.name}: ${r.config.model.architecture}, ${r.models.length} models`;
  const pictures: ReportPictures = { learningCurves: 'learning-curves.png', perSiteAccuracy: 'per-site-accuracy.png', perSiteDefectRecall: null };
  await writeFile(
    join(out, pictures.learningCurves),
    renderLineChart({
      title: "Learning curves: mean accuracy over the sites' local test splits",
      subtitle,
      xLabel: 'round (0: the initial model)',
      yLabel: 'mean accuracy',
      series: r.models.map((m) => ({ name: m.id, points: curve(m).map((p) => ({ x: p.round, y: p.mean })) })),
    }),
  );
  await writeFile(
    join(out, pictures.perSiteAccuracy),
    renderBarChart({
      title: "Accuracy on each site's local test split",
      subtitle,
      xLabel: 'site',
      yLabel: 'accuracy',
      groups: sites,
      series: r.models.map((m) => ({ name: m.id, values: sites.map((s) => m.eval[`site:${s}`]?.accuracy ?? null) })),
    }),
  );
  if (defect >= 0) {
    pictures.perSiteDefectRecall = 'per-site-defect-recall.png';
    await writeFile(
      join(out, pictures.perSiteDefectRecall),
      renderBarChart({
        title: `${r.defectClass} recall on each site's local test split`,
        subtitle,
        xLabel: 'site',
        yLabel: `${r.defectClass} recall`,
        groups: sites,
        series: r.models.map((m) => ({ name: m.id, values: sites.map((s) => m.eval[`site:${s}`]?.recall[defect] ?? null) })),
      }),
    );
  }
  return pictures;
}
