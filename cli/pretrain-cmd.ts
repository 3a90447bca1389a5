import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { modelSpecSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { architectures } from '../training/models.js';
import { pretrainBase, REFERENCE_AUGMENTATION } from '../training/pretrain.js';
import { invalidOption } from './option-checks.js';
import type { EvalMetrics } from '../shared/protocol/messages.js';

import { PRETRAIN_USAGE as USAGE } from './usage.js';

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
      'learning-rate-decay': { type: 'string', default: '1' },
      seed: { type: 'string', default: '42' },
      normalization: { type: 'string', default: 'per-image' },
      synth: { type: 'boolean', default: false },
      init: { type: 'string', default: 'he' },
      'batch-norm': { type: 'boolean', default: false },
      scale: { type: 'string', default: '1' },
      references: { type: 'string', default: 'classic' },
      augment: { type: 'boolean', default: false },
      'eval-each-epoch': { type: 'boolean', default: false },
      'keep-best': { type: 'boolean', default: false },
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
    const { generateExperimentData, INSPECTION_CLASSES } = await import('../synthetic-data/generate.js');
    const scale = Number(values.scale);
    if (!(scale > 0)) throw invalidOption(`--scale must be positive, got ${values.scale}`);
    const refRoot = `${out}-reference`;
    const { referenceSetOption } = await import('./synth-data-cmd.js');
    const references = referenceSetOption(values.references!);
    const gen = await generateExperimentData({ out: refRoot, seed: Number(values.seed), size, scale, parts: ['reference'], references });
    dataDir = gen.reference!.dir;
    classes = values.classes ? values.classes.split(',') : [...INSPECTION_CLASSES];
    process.stdout.write(`generated ${gen.files} reference images in ${dataDir}\n`);
  } else {
    dataDir = resolve(values.data!);
    classes = values.classes!.split(',');
  }
  const spec = parseConfig(
    modelSpecSchema,
    {
      architecture: values.model,
      width: Number(values.width),
      inputShape: [size, size, 3],
      classes,
      seed: Number(values.seed),
      normalization: values.normalization,
      ...(values['batch-norm'] ? { batchNorm: true } : {}),
    },
    'command line',
  );
  if (!(architectures as readonly string[]).includes(spec.architecture)) throw invalidOption(`unknown model ${spec.architecture}`);
  if (values.init !== 'he' && values.init !== 'seeded') throw invalidOption(`--init must be he or seeded, got "${values.init}"`);
  const decay = Number(values['learning-rate-decay']);
  if (!(decay > 0 && decay <= 1)) throw invalidOption(`--learning-rate-decay must be in (0, 1], got "${values['learning-rate-decay']}"`);
  const r = await pretrainBase({
    init: values.init,
    dataDir,
    model: spec,
    epochs: Number(values.epochs),
    batchSize: Number(values.batch),
    learningRate: Number(values['learning-rate']),
    learningRateDecay: decay,
    ...(values.augment ? { augmentation: REFERENCE_AUGMENTATION } : {}),
    out,
    keepBest: values['keep-best'],
    onEpoch: (e, loss) => process.stdout.write(`epoch ${e}: loss ${loss?.toFixed(4) ?? '-'}\n`),
    ...(values['eval-each-epoch'] ? { onEpochHeldOut: (e: number, m: EvalMetrics) => process.stdout.write(heldOutLine(e, m, classes)) } : {}),
  });
  if (r.best)
    process.stdout.write(
      `kept epoch ${r.best.epoch} of ${r.best.lastEpoch} (best balanced accuracy on the held-out 20%; the last epoch's: ${r.best.lastMetrics.accuracy.toFixed(3)}, balanced ${r.best.lastMetrics.balancedAccuracy.toFixed(3)})\n`,
    );
  process.stdout.write(
    `accuracy on the held-out 20%: ${r.metrics.accuracy.toFixed(3)} (balanced ${r.metrics.balancedAccuracy.toFixed(3)}), ${(r.trainMs / 1000).toFixed(1)} s on ${r.backend}\nsaved: ${out} (use it as model.initFrom)\n`,
  );
}

/** `--eval-each-epoch`: the held-out accuracy and each class's recall (how many of it were called it). */
function heldOutLine(epoch: number, m: EvalMetrics, classes: readonly string[]): string {
  const recalls = classes.map((c, i) => `${c} ${m.confusion[i]![i]}/${m.confusion[i]!.reduce((a, b) => a + b, 0)}`).join(', ');
  return `epoch ${epoch}: held-out accuracy ${m.accuracy.toFixed(3)} (balanced ${m.balancedAccuracy.toFixed(3)}); called right: ${recalls}\n`;
}
