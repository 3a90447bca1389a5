import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Tf } from './backend.js';
import type { LayersModel } from './models.js';
import type { NamedTensor } from '../shared/bundle/tensor-bundle.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * Moving weights between tfjs models and plain typed arrays. Weight names are tfjs' canonical
 * ones (`<layer>/<weight>`, as model.json lists them), never the per-process unique names tfjs
 * gives variables when a layer name repeats.
 */

export interface ModelArtifactsPlain {
  topology: Record<string, unknown>;
  tensors: NamedTensor[];
}

/** Topology and weights of a model, copied out of tfjs. */
export async function extractModel(tf: Tf, model: LayersModel): Promise<ModelArtifactsPlain> {
  let out: ModelArtifactsPlain | null = null;
  await model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      const specs = artifacts.weightSpecs ?? [];
      const data = artifacts.weightData;
      const buffer = Array.isArray(data) ? tf.io.concatenateArrayBuffers(data) : (data as ArrayBuffer);
      let offset = 0;
      const tensors: NamedTensor[] = specs.map((spec) => {
        if (spec.dtype !== 'float32')
          throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `weight ${spec.name} has dtype ${spec.dtype}; only float32 weights are supported`);
        const count = spec.shape.reduce((a, b) => a * b, 1);
        const values = new Float32Array(buffer.slice(offset, offset + count * 4));
        offset += count * 4;
        return { name: spec.name, shape: [...spec.shape], dtype: 'float32', data: values };
      });
      out = { topology: artifacts.modelTopology as Record<string, unknown>, tensors };
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  return out!;
}

/** Build a tfjs model from a topology and named weights (every weight of the model must be given). */
export async function modelFromWeights(tf: Tf, topology: Record<string, unknown>, tensors: readonly NamedTensor[]): Promise<LayersModel> {
  const total = tensors.reduce((s, t) => s + t.data.length, 0);
  const weightData = new Float32Array(total);
  let offset = 0;
  for (const t of tensors) {
    weightData.set(t.data, offset);
    offset += t.data.length;
  }
  return tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: topology,
      weightSpecs: tensors.map((t) => ({ name: t.name, shape: [...t.shape], dtype: t.dtype })),
      weightData: weightData.buffer,
    }),
  );
}

/** Canonical weight name of each model variable, in model.weights order. */
export function weightNames(model: LayersModel): string[] {
  return model.weights.map((w) => (w as unknown as { originalName?: string }).originalName ?? w.name);
}

/** Open a tfjs layers model folder (model.json + weight files) without tfjs-node's file:// handler. */
export async function loadLayersModelFromDir(tf: Tf, dir: string): Promise<LayersModel> {
  const modelJson = JSON.parse(await readFile(join(dir, 'model.json'), 'utf8')) as {
    modelTopology: Record<string, unknown>;
    weightsManifest: { paths: string[]; weights: { name: string; shape: number[]; dtype: string }[] }[];
  };
  const specs = modelJson.weightsManifest.flatMap((g) => g.weights);
  const parts = await Promise.all(modelJson.weightsManifest.flatMap((g) => g.paths).map((p) => readFile(join(dir, p))));
  const weightData = Buffer.concat(parts);
  return tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: modelJson.modelTopology,
      weightSpecs: specs as never,
      weightData: weightData.buffer.slice(weightData.byteOffset, weightData.byteOffset + weightData.byteLength),
    }),
  );
}

/** Write a model as a tfjs layers model folder (model.json + weights.bin), as tf.io's file handler would. */
export async function saveLayersModelToDir(tf: Tf, model: LayersModel, dir: string): Promise<void> {
  const { mkdir, writeFile } = await import('node:fs/promises');
  const { topology, tensors } = await extractModel(tf, model);
  await mkdir(dir, { recursive: true });
  const total = tensors.reduce((s, t) => s + t.data.byteLength, 0);
  const bin = Buffer.alloc(total);
  let offset = 0;
  for (const t of tensors) {
    Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).copy(bin, offset);
    offset += t.data.byteLength;
  }
  await writeFile(join(dir, 'weights.bin'), bin);
  const modelJson = {
    format: 'layers-model',
    generatedBy: 'fedline',
    convertedBy: null,
    modelTopology: topology,
    weightsManifest: [{ paths: ['weights.bin'], weights: tensors.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype })) }],
  };
  await writeFile(join(dir, 'model.json'), JSON.stringify(modelJson));
}
