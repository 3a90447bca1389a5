import { PNG } from 'pngjs';

/**
 * A confusion matrix as a PNG (pngjs, no fonts or downloads): rows are the true classes, columns
 * the predicted ones; each cell shows its count and its share of the row, blue on the diagonal
 * (right), red off it (wrong), darker for a larger share. Text uses a built-in 5x7 pixel font.
 */

// 5x7 glyphs, one string of 7 rows of 5 bits each ('#' = ink).
const GLYPHS: Record<string, string> = {
  A: '.###.#...##...#######...##...##...#',
  B: '####.#...##...#####.#...##...#####.',
  C: '.###.#...##....#....#....#...#.###.',
  D: '####.#...##...##...##...##...#####.',
  E: '######....#....####.#....#....#####',
  F: '######....#....####.#....#....#....',
  G: '.###.#...##....#.####...##...#.####',
  H: '#...##...##...#######...##...##...#',
  I: '.###...#....#....#....#....#...###.',
  J: '..###...#....#....#....##..#..##...',
  K: '#...##..#.#.#..##...#.#..#..#.#...#',
  L: '#....#....#....#....#....#....#####',
  M: '#...###.###.#.##...##...##...##...#',
  N: '#...###..##.#.##..###...##...##...#',
  O: '.###.#...##...##...##...##...#.###.',
  P: '####.#...##...#####.#....#....#....',
  Q: '.###.#...##...##...##.#.##..#..##.#',
  R: '####.#...##...#####.#.#..#..#.#...#',
  S: '.####' + '#....' + '#....' + '.###.' + '....#' + '....#' + '####.',
  T: '#####..#....#....#....#....#....#..',
  U: '#...##...##...##...##...##...#.###.',
  V: '#...##...##...##...##...#.#.#...#..',
  W: '#...##...##...##.#.##.#.##.#.#.#.#.',
  X: '#...##...#.#.#...#...#.#.#...##...#',
  Y: '#...##...#.#.#...#....#....#....#..',
  Z: '#####....#...#...#...#...#....#####',
  '0': '.###.#...##..###.#.###..##...#.###.',
  '1': '..#...##....#....#....#....#...###.',
  '2': '.###.#...#....#...#...#...#...#####',
  '3': '#####' + '...#.' + '..#..' + '...#.' + '....#' + '#...#' + '.###.',
  '4': '...#...##..#.#.#..#.#####...#....#.',
  '5': '######....####.....#....##...#.###.',
  '6': '..##..#...#....####.#...##...#.###.',
  '7': '#####....#...#...#...#....#....#...',
  '8': '.###.#...##...#.###.#...##...#.###.',
  '9': '.###.#...##...#.####....#...#..##..',
  '-': '...............#####...............',
  _: '..............................#####',
  '.': '.........................##....##..',
  ':': '.....##...##.........##...##.......',
  '/': '.....#...#...#...#...#.............',
  '%': '##...##..#...#...#...#...#..##...##',
  '(': '...#...#...#....#....#.....#.....#.',
  ')': '.#.....#.....#....#....#...#...#...',
  '+': '.......#....#..#####..#....#.......',
  '=': '..........#####.....#####..........',
  ' ': '...................................',
};

function glyph(ch: string): string {
  return GLYPHS[ch] ?? GLYPHS[ch.toUpperCase()] ?? GLYPHS['.']!;
}

type Rgb = readonly [number, number, number];

class Raster {
  readonly png: PNG;
  constructor(
    readonly width: number,
    readonly height: number,
  ) {
    this.png = new PNG({ width, height });
    this.fill(0, 0, width, height, [255, 255, 255]);
  }
  fill(x0: number, y0: number, w: number, h: number, c: Rgb): void {
    for (let y = Math.max(0, y0); y < Math.min(this.height, y0 + h); y++) {
      for (let x = Math.max(0, x0); x < Math.min(this.width, x0 + w); x++) {
        const o = (y * this.width + x) * 4;
        this.png.data[o] = c[0];
        this.png.data[o + 1] = c[1];
        this.png.data[o + 2] = c[2];
        this.png.data[o + 3] = 255;
      }
    }
  }
  /** Text with its top-left corner at (x, y); `scale` pixels per font pixel. */
  text(s: string, x: number, y: number, scale: number, c: Rgb): void {
    [...s].forEach((ch, i) => {
      const g = glyph(ch);
      for (let r = 0; r < 7; r++)
        for (let col = 0; col < 5; col++) if (g[r * 5 + col] === '#') this.fill(x + (i * 6 + col) * scale, y + r * scale, scale, scale, c);
    });
  }
}

export const textWidth = (s: string, scale: number) => s.length * 6 * scale - scale;

export interface ConfusionImageOptions {
  title: string;
  subtitle?: string;
  classes: readonly string[];
  /** confusion[true][predicted] counts. */
  confusion: readonly (readonly number[])[];
}

/** The PNG file bytes. Rows without samples are drawn empty. */
export function renderConfusionPng(o: ConfusionImageOptions): Buffer {
  const k = o.classes.length;
  const scale = 2;
  const pad = 12;
  const labelW = Math.max(textWidth('TRUE \\ PRED', scale), ...o.classes.map((c) => textWidth(c, scale))) + pad;
  const cellW = Math.max(90, ...o.classes.map((c) => textWidth(c, scale) + 10));
  const cellH = 52;
  const titleH = 7 * scale * 2 + 3 * pad + (o.subtitle ? 7 * scale + 6 : 0);
  const headH = 7 * scale + pad;
  const width = pad + labelW + k * cellW + pad;
  const height = titleH + headH + k * cellH + pad + 7 * scale + pad;
  const img = new Raster(Math.max(width, textWidth(o.title, scale) + 2 * pad, o.subtitle ? textWidth(o.subtitle, scale) + 2 * pad : 0), height);
  const ink: Rgb = [20, 20, 20];
  img.text(o.title, pad, pad, scale, ink);
  if (o.subtitle) img.text(o.subtitle, pad, pad + 7 * scale + 6, scale, [90, 90, 90]);
  const top = titleH;
  const left = pad + labelW;
  img.text('TRUE \\ PRED', pad, top, scale, [90, 90, 90]);
  o.classes.forEach((c, j) => img.text(c, left + j * cellW + Math.floor((cellW - textWidth(c, scale)) / 2), top, scale, ink));
  const gridTop = top + headH;
  for (let i = 0; i < k; i++) {
    const row = o.confusion[i] ?? [];
    const total = row.reduce((s, v) => s + v, 0);
    img.text(o.classes[i]!, pad, gridTop + i * cellH + Math.floor((cellH - 7 * scale) / 2), scale, ink);
    for (let j = 0; j < k; j++) {
      const n = row[j] ?? 0;
      const share = total > 0 ? n / total : 0;
      const base: Rgb = i === j ? [33, 102, 172] : [202, 44, 44];
      const color: Rgb = [0, 1, 2].map((c) => Math.round(255 + (base[c]! - 255) * share)) as unknown as Rgb;
      const x = left + j * cellW;
      const y = gridTop + i * cellH;
      img.fill(x, y, cellW, cellH, [200, 200, 200]);
      img.fill(x + 1, y + 1, cellW - 2, cellH - 2, color);
      const fg: Rgb = share > 0.5 ? [255, 255, 255] : ink;
      const count = String(n);
      const pct = total > 0 ? `${Math.round(share * 100)}%` : '-';
      img.text(count, x + Math.floor((cellW - textWidth(count, scale)) / 2), y + 8, scale, fg);
      img.text(pct, x + Math.floor((cellW - textWidth(pct, scale)) / 2), y + 8 + 7 * scale + 6, scale, fg);
    }
  }
  const totalN = o.confusion.reduce((s, r) => s + r.reduce((a, b) => a + b, 0), 0);
  const correct = o.confusion.reduce((s, r, i) => s + (r[i] ?? 0), 0);
  img.text(`N ${totalN}  ACCURACY ${totalN ? ((100 * correct) / totalN).toFixed(1) : '-'}%`, pad, gridTop + k * cellH + pad, scale, ink);
  return PNG.sync.write(img.png);
}
