import { GREY, INK, Raster, textHeight, textWidth, type Rgb } from './raster.js';

/**
 * A confusion matrix as a PNG (pngjs, no fonts or downloads): rows are the true classes, columns
 * the predicted ones; each cell shows its count and its share of the row, blue on the diagonal
 * (right), red off it (wrong), darker for a larger share. With a good class (OKAY), the cells
 * that matter on a line are named: ESCAPE (a defect passed as good) and OVERKILL (a good part
 * rejected), with their totals under the matrix. Text uses the repository's 5x8 pixel font
 * (experiment/font5x8.ts, all of printable ASCII).
 */

export { textWidth };

export interface ConfusionImageOptions {
  title: string;
  subtitle?: string;
  classes: readonly string[];
  /** confusion[true][predicted] counts. */
  confusion: readonly (readonly number[])[];
  /** The class of good parts; default OKAY when the classes have it. null: no escape/overkill marks. */
  goodClass?: string | null;
}

/** Escapes (a defect predicted good) and overkill (a good part predicted as anything else), from a confusion matrix. */
export function escapesAndOverkill(
  confusion: readonly (readonly number[])[],
  good: number,
): { escapes: number; overkill: number; defects: number; goods: number } {
  let escapes = 0;
  let defects = 0;
  confusion.forEach((row, i) => {
    if (i === good) return;
    escapes += row[good] ?? 0;
    defects += row.reduce((s, v) => s + v, 0);
  });
  const goodRow = confusion[good] ?? [];
  const goods = goodRow.reduce((s, v) => s + v, 0);
  return { escapes, overkill: goods - (goodRow[good] ?? 0), defects, goods };
}

/** The PNG file bytes. Rows without samples are drawn empty. */
export function renderConfusionPng(o: ConfusionImageOptions): Buffer {
  const k = o.classes.length;
  const goodName = o.goodClass === undefined ? (o.classes.includes('OKAY') ? 'OKAY' : null) : o.goodClass;
  const good = goodName === null ? -1 : o.classes.indexOf(goodName);
  const scale = 2;
  const pad = 12;
  const labelW = Math.max(textWidth('TRUE \\ PRED', scale), ...o.classes.map((c) => textWidth(c, scale))) + pad;
  const cellW = Math.max(90, ...o.classes.map((c) => textWidth(c, scale) + 10));
  const cellH = good >= 0 ? 62 : 52;
  const titleH = 7 * scale * 2 + 3 * pad + (o.subtitle ? 7 * scale + 6 : 0);
  const headH = 7 * scale + pad;
  const width = pad + labelW + k * cellW + pad;
  const height = titleH + headH + k * cellH + pad + (good >= 0 ? 3 : 1) * (7 * scale + pad);
  const footW = good >= 0 ? textWidth(`escapes 00000 of 00000 defects (100.0%): a defect passed as ${goodName}`, scale) + 2 * pad : 0;
  const img = new Raster(Math.max(width, footW, textWidth(o.title, scale) + 2 * pad, o.subtitle ? textWidth(o.subtitle, scale) + 2 * pad : 0), height);
  const ink = INK;
  img.text(o.title, pad, pad, scale, ink);
  if (o.subtitle) img.text(o.subtitle, pad, pad + 7 * scale + 6, scale, GREY);
  const top = titleH;
  const left = pad + labelW;
  img.text('TRUE \\ PRED', pad, top, scale, GREY);
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
      const mark = good < 0 || i === j ? null : j === good ? 'ESCAPE' : i === good ? 'OVERKILL' : null;
      if (mark && n > 0) img.text(mark, x + Math.floor((cellW - textWidth(mark, 1)) / 2), y + cellH - 11, 1, fg);
    }
  }
  const totalN = o.confusion.reduce((s, r) => s + r.reduce((a, b) => a + b, 0), 0);
  const correct = o.confusion.reduce((s, r, i) => s + (r[i] ?? 0), 0);
  const foot = gridTop + k * cellH + pad;
  img.text(`N ${totalN}, accuracy ${totalN ? ((100 * correct) / totalN).toFixed(1) : '-'}%`, pad, foot, scale, ink);
  if (good >= 0) {
    const e = escapesAndOverkill(o.confusion, good);
    const share = (n: number, of: number) => (of ? `${((100 * n) / of).toFixed(1)}%` : '-');
    const line = textHeight(scale) + pad;
    img.text(
      `escapes ${e.escapes} of ${e.defects} defects (${share(e.escapes, e.defects)}): a defect passed as ${goodName}`,
      pad,
      foot + line,
      scale,
      [202, 44, 44],
    );
    img.text(
      `overkill ${e.overkill} of ${e.goods} good parts (${share(e.overkill, e.goods)}): a good part rejected`,
      pad,
      foot + 2 * line,
      scale,
      [160, 90, 0],
    );
  }
  return img.encode();
}
