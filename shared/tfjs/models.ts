import type { Tf } from './backend.js';
import { deriveSeed } from '../random.js';

/**
 * Model builders. Layer names are fixed (Keras VGG style: block<i>_conv<j>) so that weights can be
 * matched by name across agents and from pretrained files; classifier head layers are named
 * `head_*`, which is how `federate: head` finds the tensors that travel.
 */
export type LayersModel = import('@tensorflow/tfjs').LayersModel;

export const HEAD_PREFIX = 'head_';

export interface BuildOptions {
  architecture: 'small-cnn';
  inputShape: readonly [number, number, number];
  numClasses: number;
  /** Seed of the initial weights: one seed, one set of weights, on every machine. */
  seed: number;
}

export function buildModel(tf: Tf, options: BuildOptions): LayersModel {
  switch (options.architecture) {
    case 'small-cnn':
      return buildSmallCnn(tf, options);
    default:
      throw new Error(`unknown architecture "${String(options.architecture)}"`);
  }
}

/**
 * Two conv blocks and a dense head: small enough to train on the pure-JS backend in seconds
 * on 32x32 images, big enough to separate the generated inspection classes.
 */
function buildSmallCnn(tf: Tf, { inputShape, numClasses, seed }: BuildOptions): LayersModel {
  const init = (name: string) => tf.initializers.glorotUniform({ seed: deriveSeed(seed, name) });
  const conv = (name: string, filters: number, extra: object = {}) =>
    tf.layers.conv2d({ name, filters, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init(name), ...extra });
  return tf.sequential({
    name: 'small_cnn',
    layers: [
      conv('block1_conv1', 8, { inputShape: [...inputShape] }),
      tf.layers.maxPooling2d({ name: 'block1_pool', poolSize: 2 }),
      conv('block2_conv1', 16),
      tf.layers.maxPooling2d({ name: 'block2_pool', poolSize: 2 }),
      conv('block3_conv1', 32),
      tf.layers.maxPooling2d({ name: 'block3_pool', poolSize: 2 }),
      tf.layers.flatten({ name: 'flatten' }),
      tf.layers.dense({ name: `${HEAD_PREFIX}dense1`, units: 32, activation: 'relu', kernelInitializer: init(`${HEAD_PREFIX}dense1`) }),
      tf.layers.dense({ name: `${HEAD_PREFIX}predictions`, units: numClasses, activation: 'softmax', kernelInitializer: init(`${HEAD_PREFIX}predictions`) }),
    ],
  });
}
