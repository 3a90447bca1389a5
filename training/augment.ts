import type { Rng } from '../shared/util/random.js';

/**
 * Training-time augmentation for the varied angles and lighting of a production line, applied to
 * each training image of each batch (never to the test split), on pixels in [0, 1] before
 * normalisation. Seeded: the same seed gives the same augmented batches.
 */
export interface AugmentationOptions {
  /** Mirror with probability 1/2: horizontal, vertical or both (independently). */
  flip: 'none' | 'horizontal' | 'vertical' | 'both';
  /** Add a uniform delta in [-brightness, +brightness] (pixel units of [0, 1]). */
  brightness: number;
  /** Scale the deviation from the image mean by a factor in [1 - contrast, 1 + contrast]. */
  contrast: number;
  /** Rotate by a uniform angle in [-rotationDeg, +rotationDeg] degrees about the centre (edges repeated). */
  rotationDeg: number;
}

export const NO_AUGMENTATION: AugmentationOptions = { flip: 'none', brightness: 0, contrast: 0, rotationDeg: 0 };

export function isAugmenting(o: AugmentationOptions): boolean {
  return o.flip !== 'none' || o.brightness > 0 || o.contrast > 0 || o.rotationDeg > 0;
}

/** Augment `count` HWC images in `x` in place. */
export function augmentBatch(x: Float32Array, count: number, shape: readonly [number, number, number], o: AugmentationOptions, rng: Rng): void {
  const [h, w, c] = shape;
  const per = h * w * c;
  const scratch = o.rotationDeg > 0 ? new Float32Array(per) : null;
  for (let i = 0; i < count; i++) {
    const img = x.subarray(i * per, (i + 1) * per);
    // Draw every random number whatever the options, in a fixed order: enabling one option does
    // not change the draws of another.
    const flipH = rng() < 0.5;
    const flipV = rng() < 0.5;
    const angle = (rng() * 2 - 1) * o.rotationDeg * (Math.PI / 180);
    const delta = (rng() * 2 - 1) * o.brightness;
    const factor = 1 + (rng() * 2 - 1) * o.contrast;
    if ((o.flip === 'horizontal' || o.flip === 'both') && flipH) flipHorizontal(img, h, w, c);
    if ((o.flip === 'vertical' || o.flip === 'both') && flipV) flipVertical(img, h, w, c);
    if (scratch && angle !== 0) rotate(img, scratch, h, w, c, angle);
    if (o.contrast > 0 || o.brightness > 0) {
      let mean = 0;
      for (let k = 0; k < per; k++) mean += img[k]!;
      mean /= per;
      for (let k = 0; k < per; k++) img[k] = Math.min(1, Math.max(0, (img[k]! - mean) * factor + mean + delta));
    }
  }
}

export function flipHorizontal(img: Float32Array, h: number, w: number, c: number): void {
  for (let y = 0; y < h; y++) {
    const row = y * w * c;
    for (let x = 0; x < w >> 1; x++) {
      const a = row + x * c;
      const b = row + (w - 1 - x) * c;
      for (let k = 0; k < c; k++) {
        const t = img[a + k]!;
        img[a + k] = img[b + k]!;
        img[b + k] = t;
      }
    }
  }
}

export function flipVertical(img: Float32Array, h: number, w: number, c: number): void {
  const rowLen = w * c;
  const tmp = new Float32Array(rowLen);
  for (let y = 0; y < h >> 1; y++) {
    const a = img.subarray(y * rowLen, (y + 1) * rowLen);
    const b = img.subarray((h - 1 - y) * rowLen, (h - y) * rowLen);
    tmp.set(a);
    a.set(b);
    b.set(tmp);
  }
}

/** Rotate about the image centre by `angle` radians (clockwise as displayed, rows going down), bilinear, edge pixels repeated. */
export function rotate(img: Float32Array, scratch: Float32Array, h: number, w: number, c: number, angle: number): void {
  scratch.set(img);
  const cos = Math.cos(angle);
  const sin = Math.sin(angle);
  const cx = (w - 1) / 2;
  const cy = (h - 1) / 2;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      // Inverse mapping: where in the source does this output pixel come from?
      const dx = x - cx;
      const dy = y - cy;
      const sx = Math.min(w - 1, Math.max(0, cos * dx + sin * dy + cx));
      const sy = Math.min(h - 1, Math.max(0, -sin * dx + cos * dy + cy));
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      const x1 = Math.min(x0 + 1, w - 1);
      const y1 = Math.min(y0 + 1, h - 1);
      const fx = sx - x0;
      const fy = sy - y0;
      const o = (y * w + x) * c;
      for (let k = 0; k < c; k++) {
        const top = scratch[(y0 * w + x0) * c + k]! * (1 - fx) + scratch[(y0 * w + x1) * c + k]! * fx;
        const bottom = scratch[(y1 * w + x0) * c + k]! * (1 - fx) + scratch[(y1 * w + x1) * c + k]! * fx;
        img[o + k] = top * (1 - fy) + bottom * fy;
      }
    }
  }
}
