import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Tf } from './backend.js';
import { weightNames } from './model-io.js';
import { HEAD_PREFIX, type LayersModel } from './models.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * Initial weights from a pretrained TensorFlow.js layers model on disk (model.json + weight files),
 * for example Keras' VGG19 ImageNet weights converted with tensorflowjs_converter (see docs/training.md).
 * Weights are matched by layer name and weight name (`block1_conv1/kernel`), read straight from
 * the weights manifest: the file's topology is not needed, so a Keras model whose topology tfjs
 * cannot rebuild still lends its weights. The classifier head (`head_*` layers) always keeps its
 * seeded initialisation, identical on every agent (the seed paper's new head), even when the file
 * has namesakes; so do layers absent from the file. Nothing is downloaded.
 */

export interface PretrainedReport {
  /** Layers that took their weights from the file. */
  loaded: string[];
  /** Layers that keep the seeded init: the head, and layers the file does not have. */
  kept: string[];
  /** Layers in the file that the model does not have. */
  unused: string[];
}

interface ManifestEntry {
  name: string;
  shape: number[];
  dtype: string;
  quantization?: unknown;
}

/** Every weight of a tfjs layers model folder, by its canonical name, without building the model. */
export async function readWeightsFromDir(dir: string): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
  const file = join(dir, 'model.json');
  let modelJson: { weightsManifest?: { paths: string[]; weights: ManifestEntry[] }[] };
  try {
    modelJson = JSON.parse(await readFile(file, 'utf8')) as typeof modelJson;
  } catch (err) {
    throw new FedlineError(ErrorCodes.CONFIG_READ, `cannot read the pretrained model ${file}: ${(err as Error).message}`);
  }
  if (!Array.isArray(modelJson.weightsManifest))
    throw new FedlineError(
      ErrorCodes.MODEL_INCOMPATIBLE,
      `${file} has no weightsManifest: not a tfjs layers model (convert it with tensorflowjs_converter --input_format keras)`,
    );
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const group of modelJson.weightsManifest) {
    const parts = await Promise.all(
      group.paths.map((p) =>
        readFile(join(dir, p)).catch((err: Error) => {
          throw new FedlineError(ErrorCodes.CONFIG_READ, `cannot read weight file ${join(dir, p)} listed in ${file}: ${err.message}`);
        }),
      ),
    );
    const bytes = Buffer.concat(parts);
    let offset = 0;
    for (const w of group.weights) {
      if (w.quantization)
        throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `${file}: weight ${w.name} is quantized; convert the model without --quantize_* options`);
      if (w.dtype !== 'float32')
        throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `${file}: weight ${w.name} has dtype ${w.dtype}; only float32 weights can initialise a model`);
      const count = w.shape.reduce((a, b) => a * b, 1);
      if (offset + count * 4 > bytes.byteLength)
        throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `${file}: the weight files end before weight ${w.name} (offset ${offset}, ${count * 4} bytes)`);
      // A copy: aligned, and independent of the (possibly huge) file buffer.
      const data = new Float32Array(count);
      new Uint8Array(data.buffer).set(bytes.subarray(offset, offset + count * 4));
      offset += count * 4;
      out.set(w.name, { shape: [...w.shape], data });
    }
  }
  return out;
}

/** `layer/weight` from a weight name that may carry a model prefix (`vgg19/block1_conv1/kernel`). */
function layerAndWeight(name: string): { layer: string; key: string } {
  const parts = name.split('/');
  const weight = parts.at(-1)!.replace(/:\d+$/, '');
  const layer = parts.length >= 2 ? parts.at(-2)! : '';
  return { layer, key: `${layer}/${weight}` };
}

/** Set every weight of `model` whose layer has a namesake in the folder; see the file comment. */
export async function loadPretrainedWeights(tf: Tf, model: LayersModel, dir: string): Promise<PretrainedReport> {
  const file = await readWeightsFromDir(dir);
  const byKey = new Map<string, { shape: number[]; data: Float32Array; layer: string }>();
  for (const [name, w] of file) {
    const { layer, key } = layerAndWeight(name);
    byKey.set(key, { ...w, layer });
  }
  const names = weightNames(model);
  const report: PretrainedReport = { loaded: [], kept: [], unused: [] };
  const used = new Set<string>();
  for (const layer of model.layers) {
    if (layer.weights.length === 0) continue;
    const keys = layer.weights.map((w) => layerAndWeight(names[model.weights.indexOf(w)] ?? w.name).key);
    const found = keys.map((k) => byKey.get(k));
    if (layer.name.startsWith(HEAD_PREFIX) || found.every((f) => !f)) {
      report.kept.push(layer.name);
      continue;
    }
    const missing = keys.filter((_, i) => !found[i]);
    if (missing.length)
      throw new FedlineError(
        ErrorCodes.MODEL_INCOMPATIBLE,
        `${dir}: layer ${layer.name} has only some of its weights in the file (missing ${missing.join(', ')})`,
      );
    const values = layer.weights.map((w, i) => {
      const f = found[i]!;
      if (f.shape.join('x') !== w.shape.join('x')) {
        throw new FedlineError(
          ErrorCodes.MODEL_INCOMPATIBLE,
          `${dir}: weight ${keys[i]} is ${f.shape.join('x')} in the file but ${w.shape.join('x')} in the model (same architecture, width and input channels?)`,
        );
      }
      return tf.tensor(f.data, w.shape as number[], 'float32');
    });
    layer.setWeights(values);
    for (const v of values) v.dispose();
    keys.forEach((k) => used.add(k));
    report.loaded.push(layer.name);
  }
  report.unused = [...new Set([...byKey.entries()].filter(([k]) => !used.has(k)).map(([, v]) => v.layer))];
  if (report.loaded.length === 0) {
    throw new FedlineError(
      ErrorCodes.MODEL_INCOMPATIBLE,
      `${dir}: no layer of the model has a namesake in the file (file layers: ${[...new Set([...byKey.values()].map((v) => v.layer))].slice(0, 8).join(', ')}...; model layers: block1_conv1, ...)`,
    );
  }
  return report;
}
