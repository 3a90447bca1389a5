import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadDataset } from '../edge-agent/dataset.js';
import { createImageDecoder } from '../edge-agent/images.js';
import { TfjsTrainer } from '../edge-agent/tfjs-trainer.js';
import type { GlobalModel } from '../edge-agent/trainer.js';
import { modelSpecSchema, parseConfig, type ModelSpec } from '../shared/config.js';
import type { EvalMetrics, ModelMeta } from '../shared/messages.js';
import { modelMetaSchema } from '../shared/messages.js';
import { bundleTensors, decodeBundle } from '../shared/tensor-bundle.js';
import { loadTf, type BackendPreference } from '../shared/tfjs/backend.js';
import { buildInitialBundle } from '../shared/tfjs/initial-model.js';
import { modelFromWeights, saveLayersModelToDir } from '../shared/tfjs/model-io.js';
import { architectures } from '../shared/tfjs/models.js';

/** Written next to model.json: how the starting model was made. */
export const PRETRAIN_INFO_FILE = 'pretrain.json';

export interface PretrainOptions {
  /** `<dir>/<CLASS>/*.png|jpg` reference images. */
  dataDir: string;
  model: Pick<ModelSpec, 'architecture' | 'width' | 'inputShape' | 'classes' | 'seed' | 'normalization'> & Partial<Pick<ModelSpec, 'head' | 'batchNorm'>>;
  epochs: number;
  batchSize: number;
  learningRate: number;
  /** Kernel init of the model before pretraining: seeded (Glorot, the default) or he (He-normal: deep VGGs train from scratch). */
  init?: 'seeded' | 'he';
  /** Where the tfjs layers model folder goes (usable as `model.initFrom`). */
  out: string;
  backend?: BackendPreference;
  onEpoch?: (epoch: number, loss: number | null) => void;
}

/**
 * Train a starting model centrally on reference images and save it as a tfjs layers model folder,
 * for `model.initFrom`: what a vendor's pretrained network is to the seed paper (ImageNet weights),
 * when those cannot be downloaded. Same builder, trainer and normalisation as the federation.
 */
export async function pretrainBase(o: PretrainOptions): Promise<{ metrics: EvalMetrics; trainMs: number; backend: string }> {
  const runtime = await loadTf(o.backend ?? 'auto');
  const bundle = await buildInitialBundle(runtime.tf, { ...o.model, initFrom: undefined, ...(o.init ? { init: o.init } : {}) });
  const decoded = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
  const model: GlobalModel = { version: 0, sha256: '', meta: decoded.header.meta, tensors: bundleTensors(decoded) };
  const data = await loadDataset({
    dir: o.dataDir,
    classes: o.model.classes,
    inputShape: o.model.inputShape,
    testFraction: 0.2,
    splitSeed: o.model.seed,
    decoder: await createImageDecoder(),
  });
  const trainer = new TfjsTrainer(runtime, data, { shuffleSeed: o.model.seed });
  let lastEpoch = -1;
  const result = await trainer.train(
    model,
    { epochs: o.epochs, batchSize: o.batchSize, learningRate: o.learningRate, optimizer: 'adam', classWeighting: 'auto', sampling: 'shuffle', federated: 'all' },
    model.tensors.map((t) => t.name),
    {
      onProgress: (p) => {
        if (p.batch === p.batchesPerEpoch && p.epoch !== lastEpoch) {
          lastEpoch = p.epoch;
          o.onEpoch?.(p.epoch, p.loss);
        }
      },
    },
  );
  const trained = await modelFromWeights(runtime.tf, model.meta.topology, result.tensors);
  try {
    await saveLayersModelToDir(runtime.tf, trained, o.out);
  } finally {
    trained.dispose();
  }
  // What the folder is, for whoever reuses it (the experiment reports it).
  const info = {
    createdAt: new Date().toISOString(),
    data: o.dataDir,
    architecture: o.model.architecture,
    width: o.model.width,
    batchNorm: o.model.batchNorm ?? false,
    inputShape: o.model.inputShape,
    normalization: o.model.normalization,
    epochs: o.epochs,
    learningRate: o.learningRate,
    init: o.init ?? 'seeded',
    metrics: result.metricsAfter,
    trainMs: result.trainMs,
    backend: runtime.backend,
  };
  await writeFile(join(o.out, PRETRAIN_INFO_FILE), JSON.stringify(info, null, 2) + '\n');
  return { metrics: result.metricsAfter, trainMs: result.trainMs, backend: runtime.backend };
}

const USAGE = `usage: fedline pretrain (--data DIR --classes A,B,... | --synth [--scale X]) --out DIR [--model small-cnn|vgg11|vgg16|vgg19]
                        [--size PX] [--width X] [--epochs N] [--batch N] [--learning-rate X] [--seed N] [--normalization MODE]
                        [--init he|seeded] [--batch-norm]

  --init   the kernels before pretraining: he (He-normal, the default: a VGG-19 without batch
           normalisation trains from scratch) or seeded (Glorot, the federation's own seeded init)
  --batch-norm  batch normalisation after every convolution (model.batchNorm: the experiment's
           model must then set it too)

  --synth  generate the reference images (other products, other defects, other objects; never the
           experiment's clients, their defects or its external product) in OUT-reference/ and
           train on them: the stand-in for ImageNet weights that \`fedline experiment\` reuses`;

/** \`fedline pretrain\`: a starting model from a folder of reference images, for \`model.initFrom\`. */
export async function runPretrain(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      data: { type: 'string' },
      classes: { type: 'string' },
      out: { type: 'string' },
      model: { type: 'string', default: 'vgg11' },
      size: { type: 'string', default: '64' },
      width: { type: 'string', default: '1' },
      epochs: { type: 'string', default: '10' },
      batch: { type: 'string', default: '32' },
      'learning-rate': { type: 'string', default: '0.001' },
      seed: { type: 'string', default: '42' },
      normalization: { type: 'string', default: 'per-image' },
      synth: { type: 'boolean', default: false },
      init: { type: 'string', default: 'he' },
      'batch-norm': { type: 'boolean', default: false },
      scale: { type: 'string', default: '1' },
    },
    strict: true,
  });
  if (!values.out || (values.synth ? values.data !== undefined : !values.data || !values.classes)) {
    process.stderr.write(`fedline pretrain: --out and either --data with --classes, or --synth, are required\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const size = Number(values.size);
  const out = resolve(values.out);
  let dataDir: string;
  let classes: string[];
  if (values.synth) {
    const { generateExperimentData, INSPECTION_CLASSES } = await import('../dataset/synth.js');
    const scale = Number(values.scale);
    if (!(scale > 0)) throw new Error(`--scale must be positive, got ${values.scale}`);
    const refRoot = `${out}-reference`;
    const gen = await generateExperimentData({ out: refRoot, seed: Number(values.seed), size, scale, parts: ['reference'] });
    dataDir = gen.reference!.dir;
    classes = values.classes ? values.classes.split(',') : [...INSPECTION_CLASSES];
    process.stdout.write(`generated ${gen.files} reference images in ${dataDir}\n`);
  } else {
    dataDir = resolve(values.data!);
    classes = values.classes!.split(',');
  }
  const spec = parseConfig(
    modelSpecSchema,
    { architecture: values.model, width: Number(values.width), inputShape: [size, size, 3], classes, seed: Number(values.seed), normalization: values.normalization, ...(values['batch-norm'] ? { batchNorm: true } : {}) },
    'command line',
  );
  if (!(architectures as readonly string[]).includes(spec.architecture)) throw new Error(`unknown model ${spec.architecture}`);
  if (values.init !== 'he' && values.init !== 'seeded') throw new Error(`--init must be he or seeded, got "${values.init}"`);
  const r = await pretrainBase({
    init: values.init,
    dataDir,
    model: spec,
    epochs: Number(values.epochs),
    batchSize: Number(values.batch),
    learningRate: Number(values['learning-rate']),
    out,
    onEpoch: (e, loss) => process.stdout.write(`epoch ${e + 1}: loss ${loss?.toFixed(4) ?? '-'}\n`),
  });
  process.stdout.write(`accuracy on the held-out 20%: ${r.metrics.accuracy.toFixed(3)} (balanced ${r.metrics.balancedAccuracy.toFixed(3)}), ${(r.trainMs / 1000).toFixed(1)} s on ${r.backend}\nsaved: ${out} (use it as model.initFrom)\n`);
}
