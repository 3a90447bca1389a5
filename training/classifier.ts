import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { modelMetaSchema, normalizationModes, type ModelMeta, type NormalizationMode } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import type { Tf } from './backend.js';
import { loadLayersModelFromDir, modelFromWeights } from './model-io.js';
import type { LayersModel } from './models.js';
import type { ImageDecoder } from './images.js';
import { normalizeInPlace } from './preprocess.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * Live classification (the seed paper's last step): a stored global model labels single images
 * with a confidence, with the same decoding, resizing and normalisation as training.
 */
export interface Classification {
  path: string;
  /** Predicted class, or null when the image could not be read. */
  class: string | null;
  /** Softmax probability of the predicted class. */
  confidence: number | null;
  probabilities: Record<string, number>;
  error?: string;
}

export interface Classifier {
  classes: readonly string[];
  inputShape: readonly [number, number, number];
  normalization: NormalizationMode;
  version: number | null;
  classify(paths: readonly string[]): Promise<Classification[]>;
  dispose(): void;
}

interface FedlineModelJson {
  userDefinedMetadata?: { fedline?: { version?: number; classes?: string[]; inputShape?: number[]; normalization?: string } };
}

/**
 * Open a model folder: a model store version (header.bin + weights.bin: the bundle, with classes,
 * input shape and normalisation), or any tfjs layers model folder (model.json) with fedline's
 * metadata or with `classes` / `normalization` given by the caller.
 */
export async function openClassifier(
  tf: Tf,
  dir: string,
  decoder: ImageDecoder,
  given: { classes?: string[]; normalization?: NormalizationMode } = {},
): Promise<Classifier> {
  let model: LayersModel;
  let meta: Pick<ModelMeta, 'classes' | 'inputShape' | 'normalization'> & { version: number | null };
  const header = await readFile(join(dir, 'header.bin')).catch(() => null);
  if (header) {
    const weights = await readFile(join(dir, 'weights.bin'));
    const bundle = Buffer.concat([header, weights]);
    const decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
    meta = { ...decoded.header.meta, version: decoded.header.meta.version };
    model = await modelFromWeights(tf, decoded.header.meta.topology, bundleTensors(decoded));
  } else {
    let json: FedlineModelJson;
    try {
      json = JSON.parse(await readFile(join(dir, 'model.json'), 'utf8')) as FedlineModelJson;
    } catch (err) {
      throw new FedlineError(
        ErrorCodes.MODEL_INCOMPATIBLE,
        `${dir} is not a model folder (no header.bin + weights.bin, no readable model.json: ${(err as Error).message})`,
      );
    }
    model = await loadLayersModelFromDir(tf, dir);
    const f = json.userDefinedMetadata?.fedline ?? {};
    const shape = model.inputs[0]!.shape.slice(1) as number[];
    const classes = given.classes ?? f.classes;
    const normalization = given.normalization ?? (f.normalization as NormalizationMode | undefined);
    if (!classes) throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `${dir}/model.json does not name its classes: give them (--classes A,B,...)`);
    if (!normalization || !(normalizationModes as readonly string[]).includes(normalization)) {
      throw new FedlineError(
        ErrorCodes.MODEL_INCOMPATIBLE,
        `${dir}/model.json does not say how to normalise its input: give it (--normalization ${normalizationModes.join('|')})`,
      );
    }
    meta = { classes, inputShape: shape, normalization, version: f.version ?? null };
  }
  const outputs = model.outputs[0]!.shape.at(-1);
  if (outputs !== meta.classes.length) {
    model.dispose();
    throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `${dir}: the model has ${outputs} outputs but ${meta.classes.length} classes are named`);
  }
  const [h, w, c] = meta.inputShape as [number, number, number];
  return {
    classes: meta.classes,
    inputShape: [h, w, c],
    normalization: meta.normalization,
    version: meta.version,
    async classify(paths) {
      const out: Classification[] = [];
      for (const path of paths) {
        try {
          const { pixels } = await decoder.decode(await readFile(path), path, w, h, c as 1 | 3);
          const x = Float32Array.from(pixels, (v) => v / 255);
          normalizeInPlace(x, 1, c, meta.normalization);
          const probs = tf.tidy(() => (model.predict(tf.tensor4d(x, [1, h, w, c])) as import('@tensorflow/tfjs').Tensor).dataSync() as Float32Array);
          let best = 0;
          for (let k = 1; k < probs.length; k++) if (probs[k]! > probs[best]!) best = k;
          out.push({
            path,
            class: meta.classes[best]!,
            confidence: probs[best]!,
            probabilities: Object.fromEntries(meta.classes.map((name, k) => [name, probs[k]!])),
          });
        } catch (err) {
          const message = (err as Error).message;
          out.push({ path, class: null, confidence: null, probabilities: {}, error: message.startsWith(path) ? message : `${path}: ${message}` });
        }
      }
      return out;
    },
    dispose: () => model.dispose(),
  };
}
