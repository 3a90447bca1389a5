import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PNG } from 'pngjs';
import { escapesAndOverkill, renderConfusionPng } from '../experiment/confusion-png.js';
import { renderBarChart, renderLineChart, seriesColor } from '../experiment/chart-png.js';
import { GLYPHS } from '../experiment/font5x8.js';
import { Raster, type Rgb } from '../experiment/raster.js';

const pixels = (png: Buffer) => PNG.sync.read(png);
function count(img: PNG, c: Rgb, region?: { y0: number; y1: number }): number {
  let n = 0;
  for (let y = region?.y0 ?? 0; y < (region?.y1 ?? img.height); y++)
    for (let x = 0; x < img.width; x++) {
      const o = (y * img.width + x) * 4;
      if (img.data[o] === c[0] && img.data[o + 1] === c[1] && img.data[o + 2] === c[2]) n++;
    }
  return n;
}

test('the 5x8 font draws every printable ASCII character, each its own shape', () => {
  const seen = new Map<string, string>();
  for (let code = 32; code < 127; code++) {
    const ch = String.fromCharCode(code);
    const g = GLYPHS[ch];
    assert.ok(g, `a glyph for ${JSON.stringify(ch)}`);
    assert.equal(g.length, 40);
    assert.match(g, /^[.#]+$/);
    if (ch !== ' ') assert.ok(g.includes('#'), `${JSON.stringify(ch)} has ink`);
    assert.ok(!seen.has(g), `${JSON.stringify(ch)} differs from ${JSON.stringify(seen.get(g))}`);
    seen.set(g, ch);
  }
  // What the old font drew as dots: commas, backslashes, lower case.
  const render = (s: string) => {
    const r = new Raster(20, 20);
    r.text(s, 2, 2, 2, [0, 0, 0]);
    return Buffer.from(r.png.data).toString('base64');
  };
  for (const [a, b] of [
    [',', '.'],
    ['\\', '.'],
    ['a', 'A'],
    [';', ':'],
  ] as const)
    assert.notEqual(render(a), render(b), `${a} and ${b} look different`);
});

test('confusion matrix PNG: escapes (a defect passed as OK) and overkill (a good part rejected) counted and drawn', () => {
  const classes = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];
  const confusion = [
    [40, 3, 1, 0],
    [2, 30, 0, 0],
    [0, 1, 20, 0],
    [5, 0, 0, 25],
  ];
  assert.deepEqual(escapesAndOverkill(confusion, 0), { escapes: 7, overkill: 4, defects: 83, goods: 44 });
  const img = pixels(renderConfusionPng({ title: 'federated-all on site:client1, round 3', classes, confusion }));
  const plain = pixels(renderConfusionPng({ title: 'federated-all on site:client1, round 3', classes, confusion, goodClass: null }));
  // The escape and overkill lines are drawn in their own colours, under the matrix; without a good class they are not.
  assert.ok(count(img, [202, 44, 44], { y0: img.height - 60, y1: img.height }) > 100, 'the escapes line');
  assert.ok(count(img, [160, 90, 0]) > 100, 'the overkill line');
  assert.equal(count(plain, [160, 90, 0]), 0);
  assert.ok(img.height > plain.height);
});

test('learning curves and per-site bars: one colour per series, the points where the values say', () => {
  const line = pixels(
    renderLineChart({
      title: 'Learning curves',
      xLabel: 'round',
      yLabel: 'accuracy',
      series: [
        { name: 'federated-all', points: [0, 1, 2, 3].map((x) => ({ x, y: 0.25 + 0.2 * x })) },
        { name: 'local-only', points: [0, 1, 2, 3].map((x) => ({ x, y: 0.3 })) },
      ],
    }),
  );
  assert.ok(count(line, seriesColor(0)) > 200, 'series 0 drawn');
  assert.ok(count(line, seriesColor(1)) > 200, 'series 1 drawn');
  // The rising series reaches higher (smaller y) than the flat one.
  const topOf = (img: PNG, c: Rgb) => {
    for (let y = 0; y < img.height; y++)
      for (let x = 60; x < img.width; x++) {
        const o = (y * img.width + x) * 4;
        if (img.data[o] === c[0] && img.data[o + 1] === c[1] && img.data[o + 2] === c[2]) return y;
      }
    return -1;
  };
  // (the legend is below the plot, so the first row with a series colour is in the plot)
  assert.ok(topOf(line, seriesColor(0)) < topOf(line, seriesColor(1)) - 50);
  const bars = pixels(
    renderBarChart({
      title: 'Accuracy per site',
      xLabel: 'site',
      yLabel: 'accuracy',
      groups: ['client1', 'client2', 'client3'],
      series: [
        { name: 'centralized', values: [0.9, 0.8, 0.95] },
        { name: 'local-only', values: [0.5, null, 0.6] },
      ],
    }),
  );
  assert.ok(count(bars, seriesColor(0)) > count(bars, seriesColor(1)), 'taller and more bars for the better model');
});
