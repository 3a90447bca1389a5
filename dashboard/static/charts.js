// Line charts drawn as SVG by hand: no chart library to download on a plant network.

const SVG = 'http://www.w3.org/2000/svg';
export const SITE_COLORS = ['#1565c0', '#c62828', '#2e7d32', '#6a1b9a', '#ef6c00', '#00838f', '#5d4037', '#ad1457'];

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * One line per site: x = model version, y = a metric in [0, 1]. `series` is [{ name, color, points: [{ x, y }] }].
 * Every point is a <circle class="point">, so a test can count them.
 */
export function lineChart(svg, series, yLabel) {
  const W = 360;
  const H = 200;
  const pad = { l: 34, r: 10, t: 10, b: 28 };
  svg.replaceChildren();
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const xMin = xs.length ? Math.min(...xs) : 0;
  const xMax = xs.length ? Math.max(...xs, xMin + 1) : 1;
  // The y axis starts at a round step below the lowest value, so small gains stay visible.
  const low = ys.length ? Math.min(...ys) : 0;
  const yStep = 1 - low > 0.5 ? 0.2 : 0.1;
  const yMin = Math.max(0, Math.floor((low - 0.02) / yStep) * yStep);
  const yMax = 1;
  const px = (x) => pad.l + ((x - xMin) / (xMax - xMin)) * (W - pad.l - pad.r);
  const py = (y) => H - pad.b - ((y - yMin) / (yMax - yMin)) * (H - pad.t - pad.b);
  for (let y = yMin; y <= yMax + 1e-9; y += yStep) {
    svg.append(svgEl('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: py(y), y2: py(y) }));
    svg.append(svgEl('text', { x: pad.l - 4, y: py(y) + 3, 'text-anchor': 'end' }, y.toFixed(2)));
  }
  const step = Math.max(1, Math.ceil((xMax - xMin) / 8));
  for (let x = xMin; x <= xMax; x += step) svg.append(svgEl('text', { x: px(x), y: H - pad.b + 13, 'text-anchor': 'middle' }, `v${x}`));
  svg.append(svgEl('line', { class: 'axis', x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b }));
  svg.append(svgEl('text', { x: W - pad.r, y: H - 3, 'text-anchor': 'end' }, 'model version'));
  if (!xs.length) svg.append(svgEl('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, `no ${yLabel} yet: the first round's evaluation draws it`));
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? 'L' : 'M'}${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(' ');
    svg.append(svgEl('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 2 }));
    for (const p of s.points) {
      const c = svgEl('circle', { class: 'point', cx: px(p.x), cy: py(p.y), r: 3.2, fill: s.color, 'data-site': s.name });
      c.append(svgEl('title', {}, `${s.name} v${p.x}: ${yLabel} ${p.y.toFixed(3)}`));
      svg.append(c);
    }
  }
}
