import { GREY, INK, Raster, textHeight, textWidth, type Rgb } from './raster.js';

/** The report's charts as PNG: a line chart (learning curves) and a grouped bar chart (per-site comparison). */

const PALETTE: readonly Rgb[] = [
  [31, 119, 180],
  [214, 39, 40],
  [44, 160, 44],
  [255, 127, 14],
  [148, 103, 189],
  [140, 86, 75],
  [227, 119, 194],
  [127, 127, 127],
  [188, 189, 34],
  [23, 190, 207],
];
export const seriesColor = (i: number): Rgb => PALETTE[i % PALETTE.length]!;

const SCALE = 2;
const PAD = 14;

export interface LineSeries {
  name: string;
  points: readonly { x: number; y: number }[];
}

export interface ChartFrame {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
}

/** Layout shared by both charts: title, plot area with a 0..1 y axis in %, legend under the plot. */
function frame(o: ChartFrame, legend: readonly string[], plotW: number, plotH: number) {
  const lh = textHeight(SCALE) + 8;
  const titleH = PAD + lh + (o.subtitle ? lh : 0) + PAD;
  const axisW = PAD + textHeight(SCALE) + 8 + textWidth('100%', SCALE) + 8;
  const legendCols = Math.max(1, Math.floor((plotW + axisW) / 260));
  const legendRows = Math.ceil(legend.length / legendCols);
  const width = Math.max(axisW + plotW + PAD, textWidth(o.title, SCALE) + 2 * PAD, o.subtitle ? textWidth(o.subtitle, SCALE) + 2 * PAD : 0);
  const height = titleH + plotH + 8 + lh + lh + PAD + legendRows * lh + PAD;
  const img = new Raster(width, height);
  img.text(o.title, PAD, PAD, SCALE, INK);
  if (o.subtitle) img.text(o.subtitle, PAD, PAD + lh, SCALE, GREY);
  const x0 = axisW;
  const y0 = titleH;
  // y grid and labels: 0% .. 100%
  for (let t = 0; t <= 10; t += 2) {
    const y = y0 + plotH - Math.round((plotH * t) / 10);
    img.fill(x0, y, plotW, 1, t === 0 ? INK : [225, 225, 225]);
    const label = `${t * 10}%`;
    img.text(label, x0 - 8 - textWidth(label, SCALE), y - Math.floor(textHeight(SCALE) / 2), SCALE, GREY);
  }
  img.fill(x0, y0, 1, plotH + 1, INK);
  img.textUp(o.yLabel, PAD, y0 + Math.max(0, Math.floor((plotH - textWidth(o.yLabel, SCALE)) / 2)), SCALE, GREY);
  img.text(o.xLabel, x0 + Math.floor((plotW - textWidth(o.xLabel, SCALE)) / 2), y0 + plotH + 8 + lh, SCALE, GREY);
  const legendTop = y0 + plotH + 8 + 2 * lh + PAD;
  const colW = Math.floor((width - 2 * PAD) / legendCols);
  legend.forEach((name, i) => {
    const lx = PAD + (i % legendCols) * colW;
    const ly = legendTop + Math.floor(i / legendCols) * lh;
    img.fill(lx, ly + 2, 18, textHeight(SCALE) - 4, seriesColor(i));
    img.text(name, lx + 26, ly, SCALE, INK);
  });
  const yOf = (v: number) => y0 + plotH - Math.round(plotH * Math.min(1, Math.max(0, v)));
  return { img, x0, y0, yOf, lh };
}

/** Lines over rounds (y in 0..1, drawn in %), one colour per series, with a legend. */
export function renderLineChart(o: ChartFrame & { series: readonly LineSeries[] }): Buffer {
  const xs = o.series.flatMap((s) => s.points.map((p) => p.x));
  const xMin = Math.min(0, ...xs);
  const xMax = Math.max(xMin + 1, ...xs);
  const plotW = 640;
  const plotH = 300;
  const { img, x0, y0, yOf } = frame(
    o,
    o.series.map((s) => s.name),
    plotW,
    plotH,
  );
  const xOf = (x: number) => x0 + Math.round(((x - xMin) / (xMax - xMin)) * (plotW - 10)) + 5;
  const step = Math.max(1, Math.ceil((xMax - xMin) / 12));
  for (let x = xMin; x <= xMax; x += step) {
    img.fill(xOf(x), y0 + plotH, 1, 5, INK);
    img.text(String(x), xOf(x) - Math.floor(textWidth(String(x), SCALE) / 2), y0 + plotH + 8, SCALE, GREY);
  }
  o.series.forEach((s, i) => {
    const pts = [...s.points].sort((a, b) => a.x - b.x);
    const c = seriesColor(i);
    for (let k = 1; k < pts.length; k++) img.line(xOf(pts[k - 1]!.x), yOf(pts[k - 1]!.y), xOf(pts[k]!.x), yOf(pts[k]!.y), c, 2);
    for (const p of pts) img.fill(xOf(p.x) - 3, yOf(p.y) - 3, 7, 7, c);
  });
  return img.encode();
}

/** Bars (0..1, drawn in %) per group (x axis) and series (colour), with a legend; null values are left out. */
export function renderBarChart(o: ChartFrame & { groups: readonly string[]; series: readonly { name: string; values: readonly (number | null)[] }[] }): Buffer {
  const barW = 14;
  const groupW = Math.max(o.series.length * barW + 24, ...o.groups.map((g) => textWidth(g, SCALE) + 16));
  const plotW = Math.max(320, o.groups.length * groupW + 20);
  const plotH = 300;
  const { img, x0, y0, yOf } = frame(
    o,
    o.series.map((s) => s.name),
    plotW,
    plotH,
  );
  o.groups.forEach((g, gi) => {
    const gx = x0 + 10 + gi * groupW;
    const barsLeft = gx + Math.floor((groupW - o.series.length * barW) / 2);
    o.series.forEach((s, si) => {
      const v = s.values[gi];
      if (v === null || v === undefined) return;
      const top = yOf(v);
      img.fill(barsLeft + si * barW, top, barW - 2, y0 + plotH - top, seriesColor(si));
    });
    img.text(g, gx + Math.floor((groupW - textWidth(g, SCALE)) / 2), y0 + plotH + 8, SCALE, INK);
  });
  return img.encode();
}
