import type { Optimizer, Tensor, Tensor1D, Variable } from '@tensorflow/tfjs';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { EvalMetrics, NormalizationMode, TrainTask } from '../shared/protocol/messages.js';
import { classificationMetrics } from '../shared/fl/classification-metrics.js';
import { deriveSeed, mulberry32, shuffleInPlace, type Rng } from '../shared/util/random.js';
import type { Tf, TfRuntime } from './backend.js';
import { extractModel, modelFromWeights, weightNames } from './model-io.js';
import type { LayersModel } from './models.js';
import { augmentBatch, isAugmenting, NO_AUGMENTATION, type AugmentationOptions } from './augment.js';
import type { ImageSet, LocalDataset } from './image-folder.js';
import { normalizeInPlace } from './preprocess.js';
import { batchNormMoments } from './bn-statistics-pass.js';
import type { LayerMoments } from '../shared/fl/bn-statistics.js';
import type { GlobalModel, ScaffoldControl, Trainer, TrainOptions, TrainResult } from './trainer.js';

const EVAL_BATCH = 64;

/**
 * Per-class loss weights. Inspection data is imbalanced (many good parts, few defects); unweighted,
 * a model that passes everything scores well. `balanced`: n / (k * n_c) for the k classes present
 * (sklearn's "balanced"); `auto`: balanced when the largest class has over 1.5x the smallest;
 * `none`: all 1. Classes absent locally get weight 0 (they have no samples anyway).
 */
export function lossClassWeights(labels: ArrayLike<number>, numClasses: number, mode: 'auto' | 'balanced' | 'none'): number[] {
  const counts = new Array<number>(numClasses).fill(0);
  for (let i = 0; i < labels.length; i++) counts[labels[i]!]!++;
  const present = counts.filter((c) => c > 0);
  if (mode === 'none' || present.length === 0) return counts.map(() => 1);
  if (mode === 'auto' && Math.max(...present) <= 1.5 * Math.min(...present)) return counts.map(() => 1);
  const n = labels.length;
  return counts.map((c) => (c > 0 ? n / (present.length * c) : 0));
}

/**
 * One epoch's image order. `shuffle`: every image once, seeded shuffle. `balanced`: as many draws,
 * each a class chosen uniformly among the classes present, then an image of it uniformly (with
 * replacement): rare defect classes are seen as often as the common good class.
 */
export function epochOrder(labels: Int32Array, sampling: 'shuffle' | 'balanced', rng: Rng): number[] {
  const n = labels.length;
  if (sampling === 'shuffle')
    return shuffleInPlace(
      Array.from({ length: n }, (_, i) => i),
      rng,
    );
  const byClass = new Map<number, number[]>();
  labels.forEach((l, i) => {
    const list = byClass.get(l) ?? [];
    list.push(i);
    byClass.set(l, list);
  });
  const classes = [...byClass.keys()].sort((a, b) => a - b);
  return Array.from({ length: n }, () => {
    const members = byClass.get(classes[Math.floor(rng() * classes.length)]!)!;
    return members[Math.floor(rng() * members.length)]!;
  });
}

/**
 * A frozen batch normalisation layer normalises with its moving statistics in training too, and
 * leaves them alone (as Keras does): otherwise training the head would normalise with the batch's
 * statistics while evaluation uses the frozen moving ones, and the head would learn features the
 * global model never shows it.
 */
function inferenceModeOnly(layer: LayersModel['layers'][number]): void {
  const l = layer as unknown as { call: (inputs: unknown, kwargs: Record<string, unknown>) => unknown };
  const call = l.call.bind(layer);
  l.call = (inputs, kwargs) => call(inputs, { ...kwargs, training: false });
}

/**
 * A layer trains when any of its weights is federated; the others are frozen (`federate: head`:
 * the feature extractor stays as pretrained, the seed paper's Process2). Returns the layers that train.
 */
export function freezeAllBut(m: LayersModel, federated: ReadonlySet<string>): string[] {
  const names = weightNames(m);
  // Names first: freezing a layer reorders model.weights (trainable ones first), so indices go stale.
  const layerWeightNames = m.layers.map((layer) => layer.weights.map((w) => names[m.weights.indexOf(w)] ?? w.name));
  m.layers.forEach((layer, i) => {
    const own = layerWeightNames[i]!;
    if (own.length) layer.trainable = own.some((n) => federated.has(n));
    if (!layer.trainable && layer.getClassName() === 'BatchNormalization') inferenceModeOnly(layer);
  });
  return m.layers.filter((l) => l.trainable && l.weights.length > 0).map((l) => l.name);
}

/** Accuracy, balanced accuracy, per-class precision/recall and the confusion matrix of a model on an image set. */
export async function evaluateOnSet(tf: Tf, model: LayersModel, set: ImageSet, normalization: NormalizationMode, numClasses: number): Promise<EvalMetrics> {
  const [h, w, c] = set.shape;
  const per = h * w * c;
  const predictions = new Int32Array(set.count);
  const x = new Float32Array(EVAL_BATCH * per);
  let lossSum = 0;
  for (let start = 0; start < set.count; start += EVAL_BATCH) {
    const n = Math.min(EVAL_BATCH, set.count - start);
    await set.read(
      Array.from({ length: n }, (_, i) => start + i),
      x,
    );
    const batch = x.subarray(0, n * per);
    normalizeInPlace(batch, n, c, normalization);
    const [pred, loss] = tf.tidy(() => {
      const probs = model.predict(tf.tensor4d(batch, [n, h, w, c])) as import('@tensorflow/tfjs').Tensor2D;
      const labels = tf.oneHot(tf.tensor1d(set.labels.subarray(start, start + n), 'int32'), numClasses);
      // Summed over the batch, no label smoothing (tfjs' 4th argument is labelSmoothing, the 5th the reduction).
      const l = tf.losses.softmaxCrossEntropy(labels, tf.log(tf.clipByValue(probs, 1e-7, 1)), undefined, 0, tf.Reduction.SUM);
      return [probs.argMax(-1).dataSync(), l.dataSync()[0]!] as const;
    });
    predictions.set(pred as Int32Array, start);
    lossSum += loss;
  }
  return classificationMetrics(set.labels, predictions, numClasses, set.count ? lossSum / set.count : null);
}

/**
 * How much local work a round's task asks for on `count` training images. Unset `localSteps`:
 * `epochs` full passes, one optimizer step per batch (the last batch of an epoch may be short).
 * `localSteps`: exactly that many steps, taking batches in the same per-epoch orders, one epoch
 * after another, stopping mid-epoch at the last step; so a site with ten times the images does
 * the same number of steps (and drifts as far from the global model) as a small one.
 */
export function localWork(
  count: number,
  task: Pick<TrainTask, 'epochs' | 'batchSize' | 'localSteps'>,
): { batchesPerEpoch: number; epochs: number; steps: number } {
  const batchesPerEpoch = Math.ceil(count / task.batchSize);
  if (task.localSteps === undefined) return { batchesPerEpoch, epochs: task.epochs, steps: task.epochs * batchesPerEpoch };
  return { batchesPerEpoch, epochs: Math.ceil(task.localSteps / batchesPerEpoch), steps: task.localSteps };
}

/** FedProx's proximal term: its weight and the global model's value of each training variable. */
interface Prox {
  mu: number;
  anchors: Tensor[];
}

/**
 * SCAFFOLD's correction per training variable, η_l (c - c_i) (float32), subtracted after every
 * optimizer step: with sgd each step is then w - η_l (g(w) - c_i + c), the paper's; with momentum
 * and adam the optimizer's own step is corrected in the same units. c_i+ = c_i - c + (x - y) / (K η_l)
 * (option II) measures the average step per learning rate, which for adam is the average of its
 * normalised direction, not a gradient: correcting the gradient before adam mixes the two units
 * (c - c_i of order 1 against gradients of order 1e-3) and the correction swamps the data
 * (measured in docs/how-it-works.md, Aggregation).
 */
function scaffoldCorrections(tf: Tf, m: LayersModel, vars: readonly Variable[], control: ScaffoldControl | undefined, learningRate: number): Tensor[] {
  const allNames = weightNames(m);
  const names = m.trainableWeights.map((w) => allNames[m.weights.indexOf(w as unknown as (typeof m.weights)[number])] ?? w.name);
  return vars.map((v, i) => {
    const name = names[i]!;
    const c = control?.c?.get(name) ?? null;
    const ci = control?.ci?.get(name) ?? null;
    const n = v.size;
    if ((c && c.length !== n) || (ci && ci.length !== n))
      throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `SCAFFOLD variate of ${name} has the wrong length`);
    const d = new Float32Array(n);
    for (let k = 0; k < n; k++) d[k] = learningRate * ((c ? c[k]! : 0) - (ci ? ci[k]! : 0));
    return tf.keep(tf.tensor(d, v.shape));
  });
}

/**
 * Change an optimizer's rate between steps, its state kept: tfjs' SGD (and momentum) keep the rate
 * as a scalar set by setLearningRate; Adam reads its \`learningRate\` field at every step.
 */
function setLearningRate(optimizer: Optimizer, learningRate: number): void {
  if (!(learningRate > 0) || !Number.isFinite(learningRate)) {
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `learning rate must be a positive number, got ${learningRate}`);
  }
  const o = optimizer as unknown as { setLearningRate?: (lr: number) => void; learningRate: number };
  if (typeof o.setLearningRate === 'function') o.setLearningRate(learningRate);
  else o.learningRate = learningRate;
}

export interface TrainerOptions {
  /** Seed of the per-epoch order and of the augmentation. */
  shuffleSeed: number;
  augmentation?: AugmentationOptions;
}

/**
 * Local training with TensorFlow.js: a seeded image order per epoch and one optimizer step per
 * batch, so that the same seed gives the same weights and the loop can stop at a batch boundary.
 * Batches come from the image set (decoded-image cache or disk), are augmented (training only) and
 * normalised as the model's meta says. Every tensor is created inside tf.tidy or disposed, so
 * memory stays flat across rounds.
 */
export class TfjsTrainer implements Trainer {
  readonly backend: string;
  readonly samples: { train: number; test: number };
  private readonly tf: Tf;
  private readonly data: LocalDataset;
  private readonly options: Required<TrainerOptions>;

  constructor(runtime: TfRuntime, data: LocalDataset, options: TrainerOptions | number) {
    this.tf = runtime.tf;
    this.backend = runtime.backend;
    this.data = data;
    const o = typeof options === 'number' ? { shuffleSeed: options } : options;
    this.options = { shuffleSeed: o.shuffleSeed, augmentation: o.augmentation ?? NO_AUGMENTATION };
    this.samples = { train: data.train.count, test: data.test.count };
  }

  private async load(model: GlobalModel): Promise<LayersModel> {
    const [h, w, c] = this.data.train.shape;
    const inputShape = model.meta.inputShape;
    if (inputShape[0] !== h || inputShape[1] !== w || inputShape[2] !== c) {
      throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `model input ${inputShape.join('x')} does not match the loaded images ${h}x${w}x${c}`);
    }
    return modelFromWeights(this.tf, model.meta.topology, model.tensors);
  }

  async evaluate(model: GlobalModel): Promise<EvalMetrics> {
    const m = await this.load(model);
    try {
      return await this.evaluateLoaded(m, this.data.test, model.meta.normalization);
    } finally {
      m.dispose();
    }
  }

  async batchNormStatistics(model: GlobalModel): Promise<LayerMoments[]> {
    const m = await this.load(model);
    try {
      return await batchNormMoments(this.tf, m, this.data.train, model.meta.normalization);
    } finally {
      m.dispose();
    }
  }

  private evaluateLoaded(model: LayersModel, set: ImageSet, normalization: NormalizationMode): Promise<EvalMetrics> {
    return evaluateOnSet(this.tf, model, set, normalization, this.data.classes.length);
  }

  async train(model: GlobalModel, task: TrainTask, federatedNames: readonly string[], options: TrainOptions = {}): Promise<TrainResult> {
    const tf = this.tf;
    const started = Date.now();
    if (options.learningRateAt && task.scaffold) throw new FedlineError(ErrorCodes.CONFIG_INVALID, 'a learning-rate schedule cannot be combined with SCAFFOLD');
    const m = await this.load(model);
    const optimizer =
      task.optimizer === 'adam'
        ? tf.train.adam(task.learningRate)
        : task.optimizer === 'momentum'
          ? tf.train.momentum(task.learningRate, 0.9)
          : tf.train.sgd(task.learningRate);
    let prox: Prox | null = null;
    let corrections: Tensor[] | null = null;
    try {
      const federated = new Set(federatedNames);
      freezeAllBut(m, federated);
      const set = this.data.train;
      if (set.count === 0) throw new FedlineError(ErrorCodes.DATA, 'no training images');
      const numClasses = this.data.classes.length;
      const sampling = task.sampling ?? 'shuffle';
      // Balanced sampling already evens the classes out: `auto` weighting stays off then.
      const weighting = sampling === 'balanced' && task.classWeighting === 'auto' ? 'none' : task.classWeighting;
      const classWeights = tf.tensor1d(lossClassWeights(set.labels, numClasses, weighting));
      // The variables that train: those of trainable layers (frozen layers' weights stay put).
      const vars = m.trainableWeights.map((w) => (w as unknown as { val: import('@tensorflow/tfjs').Variable }).val);
      // FedProx: the global model's values of the variables that train, for the proximal term (none when mu is 0).
      const mu = task.proxMu ?? 0;
      prox = mu > 0 ? { mu, anchors: vars.map((v) => tf.keep(v.clone())) } : null;
      if (task.scaffold) corrections = scaffoldCorrections(tf, m, vars, options.control, task.learningRate);
      const [h, w, c] = set.shape;
      const per = h * w * c;
      const { batchesPerEpoch, epochs, steps } = localWork(set.count, task);
      // The order (and augmentation, and dropout masks) depends only on the shuffle seed and the
      // base model's version, never on how often this instance trained before: an agent that
      // restarts, and the experiment's in-process simulation, train exactly as the agent would.
      const roundSeed = deriveSeed(this.options.shuffleSeed, `round:${model.version}`);
      const rng = mulberry32(roundSeed);
      const augRng = mulberry32(deriveSeed(roundSeed, 'augment'));
      const augmenting = isAugmenting(this.options.augmentation);
      // tfjs draws dropout masks from Math.random unless the layer has a seed: seed them per batch.
      const dropouts = m.layers.filter((l) => l.getClassName() === 'Dropout') as unknown as { name: string; seed?: number }[];
      const xb = new Float32Array(task.batchSize * per);
      const yb = new Int32Array(task.batchSize);
      try {
        let step = 0;
        for (let epoch = 0; epoch < epochs; epoch++) {
          const order = epochOrder(set.labels, sampling, rng);
          if (options.learningRateAt) setLearningRate(optimizer, options.learningRateAt(epoch));
          for (let b = 0; b < batchesPerEpoch && step < steps; b++) {
            // Positions are numbered from 1, as people read them (logs, status, events): before batch b+1 of epoch epoch+1.
            const at = { epoch: epoch + 1, epochs, batch: b + 1, batchesPerEpoch, step: step + 1, steps };
            if (options.atBatchBoundary) await options.atBatchBoundary(at);
            if (options.signal?.aborted) throw new FedlineError(ErrorCodes.ABORTED, 'training stopped', { reason: String(options.signal.reason) });
            const start = b * task.batchSize;
            const n = Math.min(task.batchSize, set.count - start);
            const indices = order.slice(start, start + n);
            await set.read(indices, xb);
            for (let i = 0; i < n; i++) yb[i] = set.labels[indices[i]!]!;
            const batch = xb.subarray(0, n * per);
            if (augmenting) augmentBatch(batch, n, set.shape, this.options.augmentation, augRng);
            normalizeInPlace(batch, n, c, model.meta.normalization);
            for (const d of dropouts) d.seed = deriveSeed(roundSeed, `dropout:${d.name}:${epoch}:${b}`);
            const lossValue = this.step(m, optimizer, vars, classWeights, batch, yb.subarray(0, n), numClasses, prox, corrections);
            step++;
            options.onProgress?.({ ...at, loss: lossValue });
            // Yield to the event loop between batches: MQTT keepalives, status, stop requests.
            await new Promise((resolve) => setImmediate(resolve));
          }
          if (options.afterEpoch && step === (epoch + 1) * batchesPerEpoch)
            await options.afterEpoch(epoch + 1, await this.evaluateLoaded(m, this.data.test, model.meta.normalization), async () =>
              (await extractModel(tf, m)).tensors.filter((t) => federated.has(t.name)),
            );
        }
      } finally {
        classWeights.dispose();
      }
      const metricsAfter = await this.evaluateLoaded(m, this.data.test, model.meta.normalization);
      const { tensors } = await extractModel(tf, m);
      return { tensors: tensors.filter((t) => federated.has(t.name)), sampleCount: set.count, metricsAfter, trainMs: Date.now() - started, steps };
    } finally {
      prox?.anchors.forEach((a) => a.dispose());
      corrections?.forEach((t) => t.dispose());
      optimizer.dispose();
      m.dispose();
    }
  }

  /** One optimizer step on a batch of n images: the class-weighted cross-entropy averaged over the batch; returns the loss. */
  private step(
    m: LayersModel,
    optimizer: Optimizer,
    vars: Variable[],
    classWeights: Tensor1D,
    batch: Float32Array,
    batchLabels: Int32Array,
    numClasses: number,
    prox: Prox | null = null,
    corrections: Tensor[] | null = null,
  ): number | null {
    const tf = this.tf;
    const n = batchLabels.length;
    const [h, w, c] = this.data.train.shape;
    let lossValue: number | null = null;
    tf.tidy(() => {
      const x = tf.tensor4d(batch, [n, h, w, c]);
      const labels = tf.tensor1d(batchLabels, 'int32');
      const y = tf.oneHot(labels, numClasses);
      const sampleWeights = tf.gather(classWeights, labels);
      const cost = optimizer.minimize(
        () => {
          const probs = m.apply(x, { training: true }) as import('@tensorflow/tfjs').Tensor2D;
          // Cross-entropy per sample, weighted by its class weight, averaged over the batch.
          const ce = tf.neg(tf.sum(tf.mul(y, tf.log(tf.clipByValue(probs, 1e-7, 1))), -1));
          let loss = tf.div(tf.sum(tf.mul(ce, sampleWeights)), tf.sum(sampleWeights)) as import('@tensorflow/tfjs').Scalar;
          if (prox) {
            // FedProx: + mu/2 ||w - w_global||², whose gradient adds mu (w - w_global) to each variable's.
            const sq = vars.map((v, i) => tf.sum(tf.square(tf.sub(v, prox.anchors[i]!))));
            loss = tf.add(loss, tf.mul(prox.mu / 2, tf.addN(sq)));
          }
          return loss;
        },
        true,
        vars,
      );
      // SCAFFOLD: w -= η_l (c - c_i) after the optimizer's step (see scaffoldCorrections).
      if (corrections) vars.forEach((v, i) => v.assign(tf.sub(v, corrections[i]!)));
      lossValue = cost ? cost.dataSync()[0]! : null;
    });
    return lossValue;
  }
}
