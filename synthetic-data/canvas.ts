import { randNormal, randRange, type Rng } from '../shared/util/random.js';

/** The drawing primitives of the generated images: a float RGB canvas, fills in a posed local frame, and a little geometry. */

export interface Pose {
  cx: number;
  cy: number;
  angle: number;
  /** Body length in pixels. */
  length: number;
}

export type Rgb = [number, number, number];

/** A canvas of float RGB with painter's-algorithm fills in the product's local coordinates. */
export class Canvas {
  readonly size: number;
  readonly rgb: Float32Array;

  constructor(size: number) {
    this.size = size;
    this.rgb = new Float32Array(size * size * 3);
  }

  fillBackground(rng: Rng): void {
    const base = randRange(rng, 60, 200);
    const tint: Rgb = [randRange(rng, -12, 12), randRange(rng, -12, 12), randRange(rng, -12, 12)];
    const gx = randRange(rng, -40, 40);
    const gy = randRange(rng, -40, 40);
    for (let y = 0; y < this.size; y++) {
      for (let x = 0; x < this.size; x++) {
        const v = base + (gx * (x - this.size / 2)) / this.size + (gy * (y - this.size / 2)) / this.size;
        const o = (y * this.size + x) * 3;
        this.rgb[o] = v + tint[0];
        this.rgb[o + 1] = v + tint[1];
        this.rgb[o + 2] = v + tint[2];
      }
    }
  }

  /** Paint every pixel whose centre, mapped into the pose's local frame, satisfies `inside`. */
  paint(pose: Pose, inside: (u: number, v: number) => boolean, color: Rgb | ((u: number, v: number) => Rgb)): void {
    const cos = Math.cos(pose.angle);
    const sin = Math.sin(pose.angle);
    for (let y = 0; y < this.size; y++) {
      for (let x = 0; x < this.size; x++) {
        const dx = x + 0.5 - pose.cx;
        const dy = y + 0.5 - pose.cy;
        // Local frame: u along the body (port at u > 0.5), v across, both in body lengths.
        const u = (dx * cos + dy * sin) / pose.length;
        const v = (-dx * sin + dy * cos) / pose.length;
        if (!inside(u, v)) continue;
        const c = typeof color === 'function' ? color(u, v) : color;
        const o = (y * this.size + x) * 3;
        this.rgb[o] = c[0];
        this.rgb[o + 1] = c[1];
        this.rgb[o + 2] = c[2];
      }
    }
  }

  /** Paint in image coordinates (clutter on EMPTY images). */
  paintPixels(inside: (x: number, y: number) => boolean, color: Rgb): void {
    for (let y = 0; y < this.size; y++) {
      for (let x = 0; x < this.size; x++) {
        if (!inside(x + 0.5, y + 0.5)) continue;
        const o = (y * this.size + x) * 3;
        this.rgb[o] = color[0];
        this.rgb[o + 1] = color[1];
        this.rgb[o + 2] = color[2];
      }
    }
  }

  toRgba(rng: Rng, brightness: number, contrast: number, noise: number): Uint8Array {
    const out = new Uint8Array(this.size * this.size * 4);
    for (let i = 0, j = 0; i < this.rgb.length; i += 3, j += 4) {
      for (let c = 0; c < 3; c++) {
        const v = (this.rgb[i + c]! - 128) * contrast + 128 + brightness + randNormal(rng) * noise;
        out[j + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
      out[j + 3] = 255;
    }
    return out;
  }
}

export const scale = (c: readonly number[], k: number): Rgb => [c[0]! * k, c[1]! * k, c[2]! * k];

/** Distance from (u, v) to the segment a-b. */
export function segmentDistance(u: number, v: number, a: readonly [number, number], b: readonly [number, number]): number {
  const du = b[0] - a[0];
  const dv = b[1] - a[1];
  const t = Math.max(0, Math.min(1, ((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv || 1)));
  return Math.hypot(u - a[0] - t * du, v - a[1] - t * dv);
}
