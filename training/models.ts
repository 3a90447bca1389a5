import type { Tf } from './backend.js';
import { deriveSeed } from '../shared/util/random.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * Model builders. Layer names are fixed (Keras VGG style: block<i>_conv<j>, block<i>_pool) so that
 * weights can be matched by name across agents and from pretrained files (a Keras VGG converted
 * with tensorflowjs_converter uses the same names); classifier head layers are named `head_*`,
 * which is how `federate: head` finds the tensors that travel.
 *
 * A convolution and its ReLU are two layers (`block1_conv1`, `block1_conv1_relu`): tfjs then runs
 * the convolution and its bias as one fused kernel in training too (it only fuses a linear
 * activation under a gradient tape). The weights are the same as a Keras conv layer's with
 * activation='relu'.
 */
export type LayersModel = import('@tensorflow/tfjs').LayersModel;
type Layer = import('@tensorflow/tfjs').layers.Layer;

export const HEAD_PREFIX = 'head_';

export const architectures = ['small-cnn', 'vgg11', 'vgg16', 'vgg19'] as const;
export type Architecture = (typeof architectures)[number];

export interface HeadSpec {
  /** Hidden dense layers (ReLU) before the output layer, in units. */
  dense: readonly number[];
  /** Dropout rate after each hidden dense layer (0: none). */
  dropout: number;
}

export interface BuildOptions {
  architecture: Architecture;
  inputShape: readonly [number, number, number];
  numClasses: number;
  /** Seed of the initial weights: one seed, one set of weights, on every machine. */
  seed: number;
  /** Multiplies every convolution's filter count (VGG: 64..512; small-cnn: 8..32). Default 1. */
  width?: number;
  /** The classifier head; default: the architecture's own (see DEFAULT_HEADS). */
  head?: HeadSpec;
  /**
   * seeded: Glorot-uniform kernels (Keras' default; the federation's common init); he: He-normal
   * kernels (Kaiming), which lets a deep VGG without batch normalisation train from scratch (a
   * Glorot-initialised VGG-19 barely moves, as the seed paper saw with its random init); zeros:
   * no random initialisation (sizing a model without training it). Default seeded.
   */
  init?: 'seeded' | 'he' | 'zeros';
  /**
   * Batch normalisation after every convolution (conv without bias -> BN -> ReLU; layers
   * `<conv>_bn`), the usual way to make a deep VGG train from scratch. Its moving mean and
   * variance are weights like any other: they travel with `federate: all` and FedAvg averages them.
   * Default false (the published VGG).
   */
  batchNorm?: boolean;
}

/** Convolutions per block of the VGG variants (Simonyan & Zisserman, configurations A, D, E). */
export const VGG_BLOCKS: Record<'vgg11' | 'vgg16' | 'vgg19', readonly number[]> = {
  vgg11: [1, 1, 2, 2, 2],
  vgg16: [2, 2, 3, 3, 3],
  vgg19: [2, 2, 4, 4, 4],
};
const VGG_FILTERS = [64, 128, 256, 512, 512] as const;

/** The seed paper's head for VGG-19 (Keras' own fc1/fc2 sizes) and small defaults. */
export const PAPER_HEAD: HeadSpec = { dense: [4096, 4096], dropout: 0.5 };
export const DEFAULT_HEADS: Record<Architecture, HeadSpec> = {
  'small-cnn': { dense: [32], dropout: 0 },
  vgg11: { dense: [256], dropout: 0.5 },
  vgg16: { dense: [256], dropout: 0.5 },
  vgg19: { dense: [256], dropout: 0.5 },
};

/** Smallest input side of a VGG: five 2x2 poolings. */
export const VGG_MIN_INPUT = 32;

export function buildModel(tf: Tf, options: BuildOptions): LayersModel {
  const { architecture, inputShape } = options;
  const width = options.width ?? 1;
  if (!(width > 0)) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `width must be > 0, got ${width}`);
  const head = options.head ?? DEFAULT_HEADS[architecture];
  if (!head) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `unknown architecture "${String(architecture)}" (known: ${architectures.join(', ')})`);
  const init = (name: string) =>
    options.init === 'zeros'
      ? tf.initializers.zeros()
      : options.init === 'he'
        ? tf.initializers.heNormal({ seed: deriveSeed(options.seed, name) })
        : tf.initializers.glorotUniform({ seed: deriveSeed(options.seed, name) });
  const filters = (n: number) => Math.max(1, Math.round(n * width));
  const bn = options.batchNorm === true;
  const conv = (name: string, n: number, first: boolean): Layer[] => [
    tf.layers.conv2d({
      name,
      filters: filters(n),
      kernelSize: 3,
      padding: 'same',
      useBias: !bn,
      kernelInitializer: init(name),
      ...(first ? { inputShape: [...inputShape] } : {}),
    }),
    ...(bn ? [tf.layers.batchNormalization({ name: `${name}_bn`, axis: -1, momentum: 0.9 })] : []),
    tf.layers.reLU({ name: `${name}_relu` }),
  ];
  const layers: Layer[] = [];
  if (architecture === 'small-cnn') {
    // Three conv blocks and a dense head: small enough to train in seconds on 32x32 images, big
    // enough to separate the generated inspection classes.
    [8, 16, 32].forEach((n, i) => {
      layers.push(...conv(`block${i + 1}_conv1`, n, i === 0), tf.layers.maxPooling2d({ name: `block${i + 1}_pool`, poolSize: 2 }));
    });
  } else {
    const blocks = VGG_BLOCKS[architecture];
    if (!blocks) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `unknown architecture "${String(architecture)}" (known: ${architectures.join(', ')})`);
    if (inputShape[0] < VGG_MIN_INPUT || inputShape[1] < VGG_MIN_INPUT) {
      throw new FedlineError(
        ErrorCodes.CONFIG_INVALID,
        `${architecture} needs inputs of at least ${VGG_MIN_INPUT}x${VGG_MIN_INPUT} px (five 2x2 poolings), got ${inputShape[0]}x${inputShape[1]}`,
      );
    }
    blocks.forEach((convs, i) => {
      for (let j = 0; j < convs; j++) layers.push(...conv(`block${i + 1}_conv${j + 1}`, VGG_FILTERS[i]!, layers.length === 0));
      layers.push(tf.layers.maxPooling2d({ name: `block${i + 1}_pool`, poolSize: 2, strides: 2 }));
    });
  }
  layers.push(tf.layers.flatten({ name: 'flatten' }));
  head.dense.forEach((units, i) => {
    const name = `${HEAD_PREFIX}dense${i + 1}`;
    layers.push(tf.layers.dense({ name, units, activation: 'relu', kernelInitializer: init(name) }));
    if (head.dropout > 0) layers.push(tf.layers.dropout({ name: `${HEAD_PREFIX}dropout${i + 1}`, rate: head.dropout }));
  });
  const out = `${HEAD_PREFIX}predictions`;
  layers.push(tf.layers.dense({ name: out, units: options.numClasses, activation: 'softmax', kernelInitializer: init(out) }));
  return tf.sequential({ name: architecture.replace(/-/g, '_'), layers });
}

/** Parameter counts of a built model: all weights, and those of the classifier head. */
export function countParameters(model: LayersModel): { total: number; head: number } {
  let total = 0;
  let head = 0;
  for (const layer of model.layers) {
    const n = layer.countParams();
    total += n;
    if (layer.name.startsWith(HEAD_PREFIX)) head += n;
  }
  return { total, head };
}
