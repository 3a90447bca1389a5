import { modelMetaSchema, type ModelMeta } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle, sha256Hex } from '../shared/bundle/tensor-bundle.js';
import type { Tf } from './backend.js';
import { modelFromWeights } from './model-io.js';
import type { LayersModel } from './models.js';
import { decodeImage, resizeInto } from './images.js';
import { normalizeInPlace } from './preprocess.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

export interface Classification {
  classIndex: number;
  probabilities: number[];
}

/** An image classifier the inspection service can swap: one global model version. */
export interface Classifier {
  readonly version: number;
  readonly sha256: string;
  readonly classes: readonly string[];
  /** Decode, resize, normalise exactly as training does, and predict. Throws on an unreadable image. */
  classify(bytes: Buffer, name: string): Classification;
  dispose(): void;
}

/**
 * A global model bundle as a tfjs classifier. Preprocessing is the training path's own:
 * training/images.ts decodes and resizes (bilinear, to the model's input shape and channels),
 * training/preprocess.ts normalises with the mode in the model's meta.
 */
export class TfjsClassifier implements Classifier {
  readonly version: number;
  readonly sha256: string;
  readonly classes: readonly string[];
  private readonly tf: Tf;
  private readonly model: LayersModel;
  private readonly meta: ModelMeta;
  private readonly input: Float32Array;

  private constructor(tf: Tf, model: LayersModel, meta: ModelMeta, sha256: string) {
    this.tf = tf;
    this.model = model;
    this.meta = meta;
    this.version = meta.version;
    this.sha256 = sha256;
    this.classes = meta.classes;
    const [h, w, c] = meta.inputShape as [number, number, number];
    this.input = new Float32Array(h * w * c);
  }

  static async fromBundle(tf: Tf, bundle: Uint8Array): Promise<TfjsClassifier> {
    const decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
    const meta = decoded.header.meta;
    if (meta.inputShape.length !== 3 || (meta.inputShape[2] !== 1 && meta.inputShape[2] !== 3))
      throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `model input shape [${meta.inputShape.join(', ')}] is not [height, width, 1 or 3]`);
    const model = await modelFromWeights(tf, meta.topology, bundleTensors(decoded));
    return new TfjsClassifier(tf, model, meta, sha256Hex(bundle));
  }

  classify(bytes: Buffer, name: string): Classification {
    const [h, w, c] = this.meta.inputShape as [number, number, 1 | 3];
    const img = decodeImage(bytes, name);
    if (img.width < 1 || img.height < 1) throw new FedlineError(ErrorCodes.DATA, `${name}: empty image`);
    resizeInto(img, w, h, c, this.input, 0);
    normalizeInPlace(this.input, 1, c, this.meta.normalization);
    const probabilities = this.tf.tidy(() =>
      Array.from((this.model.predict(this.tf.tensor4d(this.input, [1, h, w, c])) as import('@tensorflow/tfjs').Tensor).dataSync()),
    );
    let classIndex = 0;
    for (let i = 1; i < probabilities.length; i++) if (probabilities[i]! > probabilities[classIndex]!) classIndex = i;
    return { classIndex, probabilities };
  }

  dispose(): void {
    this.model.dispose();
  }
}
