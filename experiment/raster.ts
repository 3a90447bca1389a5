import { PNG } from 'pngjs';
import { FONT_CAP_HEIGHT, FONT_HEIGHT, FONT_WIDTH, glyphOf } from './font5x8.js';

/** A white RGB canvas for the report's pictures (pngjs, no fonts or downloads): rectangles, lines, text. */
export type Rgb = readonly [number, number, number];

export const INK: Rgb = [20, 20, 20];
export const GREY: Rgb = [90, 90, 90];

/** Width in pixels of `s` at `scale` pixels per font pixel (one blank column between characters). */
export const textWidth = (s: string, scale: number): number => Math.max(0, [...s].length * (FONT_WIDTH + 1) * scale - scale);
/** Height of a line of text above the baseline. */
export const textHeight = (scale: number): number => FONT_CAP_HEIGHT * scale;

export class Raster {
  readonly png: PNG;
  constructor(
    readonly width: number,
    readonly height: number,
  ) {
    this.png = new PNG({ width, height });
    this.fill(0, 0, width, height, [255, 255, 255]);
  }

  fill(x0: number, y0: number, w: number, h: number, c: Rgb): void {
    for (let y = Math.max(0, Math.round(y0)); y < Math.min(this.height, Math.round(y0 + h)); y++) {
      for (let x = Math.max(0, Math.round(x0)); x < Math.min(this.width, Math.round(x0 + w)); x++) {
        const o = (y * this.width + x) * 4;
        this.png.data[o] = c[0];
        this.png.data[o + 1] = c[1];
        this.png.data[o + 2] = c[2];
        this.png.data[o + 3] = 255;
      }
    }
  }

  /** A straight line `thick` pixels wide (square pen). */
  line(x0: number, y0: number, x1: number, y1: number, c: Rgb, thick = 1): void {
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    const half = Math.floor(thick / 2);
    for (let i = 0; i <= steps; i++) {
      const x = Math.round(x0 + ((x1 - x0) * i) / steps);
      const y = Math.round(y0 + ((y1 - y0) * i) / steps);
      this.fill(x - half, y - half, thick, thick, c);
    }
  }

  /** Text with its top-left corner at (x, y); `scale` pixels per font pixel. */
  text(s: string, x: number, y: number, scale: number, c: Rgb): void {
    [...s].forEach((ch, i) => {
      const g = glyphOf(ch);
      for (let r = 0; r < FONT_HEIGHT; r++)
        for (let col = 0; col < FONT_WIDTH; col++)
          if (g[r * FONT_WIDTH + col] === '#') this.fill(x + (i * (FONT_WIDTH + 1) + col) * scale, y + r * scale, scale, scale, c);
    });
  }

  /** Text turned 90 degrees counter-clockwise (a y-axis label), its top-left corner at (x, y). */
  textUp(s: string, x: number, y: number, scale: number, c: Rgb): void {
    const w = textWidth(s, scale);
    [...s].forEach((ch, i) => {
      const g = glyphOf(ch);
      for (let r = 0; r < FONT_HEIGHT; r++)
        for (let col = 0; col < FONT_WIDTH; col++)
          if (g[r * FONT_WIDTH + col] === '#') this.fill(x + r * scale, y + w - (i * (FONT_WIDTH + 1) + col + 1) * scale, scale, scale, c);
    });
  }

  encode(): Buffer {
    return PNG.sync.write(this.png);
  }
}
