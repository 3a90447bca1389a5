import type { NormalizationMode } from '../shared/protocol/messages.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * Input normalisation, applied identically in training, evaluation and inspection; the mode
 * travels in the global model's meta so every agent and every consumer of the model agrees.
 *   unit       pixels in [0, 1] as decoded
 *   per-image  each image shifted to mean 0 and scaled to standard deviation 1 (robust to the
 *              lighting and exposure changes of a production line)
 *   imagenet   (x - mean) / std per channel with the ImageNet statistics (torch-style pretrained weights)
 *   caffe      BGR order, 0..255, minus the ImageNet mean (how Keras' VGG16/VGG19 weights were trained)
 */
export type Normalization = NormalizationMode;

const IMAGENET_MEAN = [0.485, 0.456, 0.406];
const IMAGENET_STD = [0.229, 0.224, 0.225];
/** Keras `preprocess_input(mode='caffe')`: the ImageNet mean in BGR order, on 0..255. */
const CAFFE_MEAN_BGR = [103.939, 116.779, 123.68];

/** Normalise `count` images (HWC, values in [0, 1]) in place. */
export function normalizeInPlace(x: Float32Array, count: number, channels: number, mode: Normalization): void {
  if (mode === 'unit' || count === 0) return;
  const perImage = x.length / count;
  if (mode === 'per-image') {
    // Floor on the std as in tf.image.per_image_standardization: 1 / sqrt(N) for flat images.
    const minStd = 1 / Math.sqrt(perImage);
    for (let i = 0; i < count; i++) {
      const v = x.subarray(i * perImage, (i + 1) * perImage);
      let mean = 0;
      for (let k = 0; k < v.length; k++) mean += v[k]!;
      mean /= v.length;
      let sq = 0;
      for (let k = 0; k < v.length; k++) sq += (v[k]! - mean) ** 2;
      const inv = 1 / Math.max(Math.sqrt(sq / v.length), minStd);
      for (let k = 0; k < v.length; k++) v[k] = (v[k]! - mean) * inv;
    }
    return;
  }
  if (channels !== 3) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `${mode} normalisation needs 3-channel images`);
  if (mode === 'imagenet') {
    for (let k = 0; k < x.length; k++) {
      const c = k % 3;
      x[k] = (x[k]! - IMAGENET_MEAN[c]!) / IMAGENET_STD[c]!;
    }
    return;
  }
  // caffe: swap R and B, scale to 0..255, subtract the mean.
  for (let k = 0; k < x.length; k += 3) {
    const r = x[k]!;
    const b = x[k + 2]!;
    x[k] = b * 255 - CAFFE_MEAN_BGR[0]!;
    x[k + 1] = x[k + 1]! * 255 - CAFFE_MEAN_BGR[1]!;
    x[k + 2] = r * 255 - CAFFE_MEAN_BGR[2]!;
  }
}
