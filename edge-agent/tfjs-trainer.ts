import { ErrorCodes, FedlineError } from '../shared/errors.js';
import type { EvalMetrics, TrainTask } from '../shared/messages.js';
import { classificationMetrics } from '../shared/metrics.js';
import { deriveSeed, mulberry32, shuffleInPlace } from '../shared/random.js';
import type { Tf, TfRuntime } from '../shared/tfjs/backend.js';
import { extractModel, modelFromWeights, weightNames } from '../shared/tfjs/model-io.js';
import type { LayersModel } from '../shared/tfjs/models.js';
import type { LabeledImages, LocalDataset } from './dataset.js';
import type { GlobalModel, Trainer, TrainOptions, TrainResult } from './trainer.js';

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
 * Local training with TensorFlow.js: a seeded shuffle per epoch and one `trainOnBatch` per batch,
 * so that the same seed gives the same weights and the loop can stop at a batch boundary.
 * Every tensor is created inside tf.tidy or disposed, so memory stays flat across rounds.
 */
export class TfjsTrainer implements Trainer {
  readonly backend: string;
  readonly samples: { train: number; test: number };
  private readonly tf: Tf;
  private readonly data: LocalDataset;
  private readonly shuffleSeed: number;
  private round = 0;

  constructor(runtime: TfRuntime, data: LocalDataset, shuffleSeed: number) {
    this.tf = runtime.tf;
    this.backend = runtime.backend;
    this.data = data;
    this.shuffleSeed = shuffleSeed;
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
      return this.evaluateLoaded(m, this.data.test);
    } finally {
      m.dispose();
    }
  }

  private evaluateLoaded(model: LayersModel, set: LabeledImages): EvalMetrics {
    const tf = this.tf;
    const numClasses = this.data.classes.length;
    const per = set.shape[0] * set.shape[1] * set.shape[2];
    const predictions = new Int32Array(set.count);
    let lossSum = 0;
    for (let start = 0; start < set.count; start += EVAL_BATCH) {
      const n = Math.min(EVAL_BATCH, set.count - start);
      const [pred, loss] = tf.tidy(() => {
        const x = tf.tensor4d(set.x.subarray(start * per, (start + n) * per), [n, ...set.shape]);
        const probs = model.predict(x) as import('@tensorflow/tfjs').Tensor2D;
        const labels = tf.oneHot(tf.tensor1d(set.y.subarray(start, start + n), 'int32'), numClasses);
        const l = tf.losses.softmaxCrossEntropy(labels, tf.log(tf.clipByValue(probs, 1e-7, 1)), undefined, tf.Reduction.SUM);
        return [probs.argMax(-1).dataSync(), l.dataSync()[0]!] as const;
      });
      predictions.set(pred as Int32Array, start);
      lossSum += loss;
    }
    return classificationMetrics(set.y, predictions, numClasses, set.count ? lossSum / set.count : null);
  }

  async train(model: GlobalModel, task: TrainTask, federatedNames: readonly string[], options: TrainOptions = {}): Promise<TrainResult> {
    const tf = this.tf;
    const started = Date.now();
    const m = await this.load(model);
    const optimizer =
      task.optimizer === 'adam' ? tf.train.adam(task.learningRate) : task.optimizer === 'momentum' ? tf.train.momentum(task.learningRate, 0.9) : tf.train.sgd(task.learningRate);
    try {
      const federated = new Set(federatedNames);
      const names = weightNames(m);
      // A layer trains when any of its weights is federated; the others are frozen.
      for (const layer of m.layers) {
        const own = layer.weights.map((w) => names[m.weights.indexOf(w)] ?? w.name);
        if (own.length) layer.trainable = own.some((n) => federated.has(n));
      }
      const set = this.data.train;
      if (set.count === 0) throw new FedlineError(ErrorCodes.DATA, 'no training images');
      const numClasses = this.data.classes.length;
      const classWeights = tf.tensor1d(lossClassWeights(set.y, numClasses, task.classWeighting));
      // The variables that train: those of trainable layers (frozen layers' weights stay put).
      const vars = m.trainableWeights.map((w) => (w as unknown as { val: import('@tensorflow/tfjs').Variable }).val);
      const per = set.shape[0] * set.shape[1] * set.shape[2];
      const batchesPerEpoch = Math.ceil(set.count / task.batchSize);
      const rng = mulberry32(deriveSeed(this.shuffleSeed, `round:${model.version}:${this.round++}`));
      const order = Array.from({ length: set.count }, (_, i) => i);
      const xb = new Float32Array(task.batchSize * per);
      const yb = new Int32Array(task.batchSize);
      try {
        for (let epoch = 0; epoch < task.epochs; epoch++) {
          shuffleInPlace(order, rng);
          for (let b = 0; b < batchesPerEpoch; b++) {
            if (options.atBatchBoundary) await options.atBatchBoundary({ epoch, epochs: task.epochs, batch: b, batchesPerEpoch });
            if (options.signal?.aborted) throw new FedlineError(ErrorCodes.ABORTED, 'training stopped', { reason: String(options.signal.reason) });
            const start = b * task.batchSize;
            const n = Math.min(task.batchSize, set.count - start);
            for (let i = 0; i < n; i++) {
              const idx = order[start + i]!;
              xb.set(set.x.subarray(idx * per, (idx + 1) * per), i * per);
              yb[i] = set.y[idx]!;
            }
            let lossValue: number | null = null;
            tf.tidy(() => {
              const x = tf.tensor4d(xb.subarray(0, n * per), [n, ...set.shape]);
              const labels = tf.tensor1d(yb.subarray(0, n), 'int32');
              const y = tf.oneHot(labels, numClasses);
              const sampleWeights = tf.gather(classWeights, labels);
              const cost = optimizer.minimize(
                () => {
                  const probs = m.apply(x, { training: true }) as import('@tensorflow/tfjs').Tensor2D;
                  // Cross-entropy per sample, weighted by its class weight, averaged over the batch.
                  const ce = tf.neg(tf.sum(tf.mul(y, tf.log(tf.clipByValue(probs, 1e-7, 1))), -1));
                  return tf.div(tf.sum(tf.mul(ce, sampleWeights)), tf.sum(sampleWeights)) as import('@tensorflow/tfjs').Scalar;
                },
                true,
                vars,
              );
              lossValue = cost ? cost.dataSync()[0]! : null;
            });
            options.onProgress?.({ epoch, epochs: task.epochs, batch: b + 1, batchesPerEpoch, loss: lossValue });
            // Yield to the event loop between batches: MQTT keepalives, status, stop requests.
            await new Promise((resolve) => setImmediate(resolve));
          }
        }
      } finally {
        classWeights.dispose();
      }
      const metricsAfter = this.evaluateLoaded(m, this.data.test);
      const { tensors } = await extractModel(tf, m);
      return { tensors: tensors.filter((t) => federated.has(t.name)), sampleCount: set.count, metricsAfter, trainMs: Date.now() - started };
    } finally {
      optimizer.dispose();
      m.dispose();
    }
  }
}
