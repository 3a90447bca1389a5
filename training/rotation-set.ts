import type { ImageSet } from './image-folder.js';

/**
 * The self-supervised pretext task of the base's site pass (experiment/self-supervised.ts):
 * predict by how many quarter turns an image was rotated (Gidaris et al., "Unsupervised
 * representation learning by predicting image rotations", ICLR 2018). Every image of a site's set
 * appears four times, turned 0, 90, 180 and 270 degrees, labelled with the turn: the labels come
 * from the turn alone, never from the image's class, so the pass needs no labelled images and
 * learns the sites' own parts (their outline, port, surface) instead of the reference images'.
 */

export const ROTATION_CLASSES = ['ROT0', 'ROT90', 'ROT180', 'ROT270'] as const;

/** Turn one square HWC image by `quarterTurns` x 90 degrees counter-clockwise, from `src` into `dst`. */
export function rotateQuarterTurns(src: Float32Array, dst: Float32Array, side: number, channels: number, quarterTurns: number): void {
  const k = ((quarterTurns % 4) + 4) % 4;
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      // Destination (y, x) takes the source pixel that the turn moves there.
      const [sy, sx] = k === 0 ? [y, x] : k === 1 ? [x, side - 1 - y] : k === 2 ? [side - 1 - y, side - 1 - x] : [side - 1 - x, y];
      const d = (y * side + x) * channels;
      const s = (sy * side + sx) * channels;
      for (let c = 0; c < channels; c++) dst[d + c] = src[s + c]!;
    }
  }
}

/**
 * The rotation pretext set of `source`: image 4i + k is source image i turned k quarter turns,
 * label k. Only `source.read` and `source.count` are used: the source's labels are never read.
 */
export function rotationImageSet(source: Pick<ImageSet, 'count' | 'shape' | 'paths' | 'read' | 'cached'>): ImageSet {
  const [h, w, c] = source.shape;
  if (h !== w) throw new RangeError(`rotation pretext needs square images, got ${h}x${w}`);
  const per = h * w * c;
  const count = source.count * 4;
  const labels = new Int32Array(count);
  for (let i = 0; i < count; i++) labels[i] = i % 4;
  const scratch = new Float32Array(per);
  return {
    count,
    labels,
    shape: source.shape,
    paths: source.paths.flatMap((p) => [p, p, p, p]),
    get cached() {
      return source.cached * 4;
    },
    async read(indices, out) {
      for (let j = 0; j < indices.length; j++) {
        const i = indices[j]!;
        await source.read([Math.floor(i / 4)], scratch);
        rotateQuarterTurns(scratch, out.subarray(j * per, (j + 1) * per), h, c, i % 4);
      }
    },
  };
}
