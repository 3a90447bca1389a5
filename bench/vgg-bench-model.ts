import type { Tf } from '../training/backend.js';
import type { LayersModel } from '../training/models.js';

/**
 * The benchmark network of issue 3, identical in bench/torch-train-worker.py: 6 conv 3x3 layers of
 * 16, 32, 64, 64, 128, 128 filters (same padding, ReLU) with 2x2 max pooling after the 1st, 2nd,
 * 4th and 6th, dense 128 (ReLU), dense 4; 64x64x3 input; 544,740 parameters.
 */
export const BENCH_INPUT = [64, 64, 3] as const;
export const BENCH_CLASSES = 4;
export const BENCH_BATCH = 32;

export function buildBenchModel(tf: Tf): LayersModel {
  const conv = (filters: number, extra: object = {}) => [tf.layers.conv2d({ filters, kernelSize: 3, padding: 'same', ...extra }), tf.layers.reLU()];
  const pool = () => tf.layers.maxPooling2d({ poolSize: 2 });
  return tf.sequential({
    layers: [
      ...conv(16, { inputShape: [...BENCH_INPUT] }),
      pool(),
      ...conv(32),
      pool(),
      ...conv(64),
      ...conv(64),
      pool(),
      ...conv(128),
      ...conv(128),
      pool(),
      tf.layers.flatten(),
      tf.layers.dense({ units: 128, activation: 'relu' }),
      tf.layers.dense({ units: BENCH_CLASSES }),
    ],
  });
}
