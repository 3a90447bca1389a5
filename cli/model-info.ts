import { parseArgs } from 'node:util';
import { UsageError } from './option-checks.js';
import { loadTf } from '../training/backend.js';
import { federationSizes } from '../training/model-size.js';
import { architectures, DEFAULT_HEADS, PAPER_HEAD, type Architecture, type HeadSpec } from '../training/models.js';

const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB`;

/**
 * `fedline model-info`: parameters and per-round update size of a model in both federation modes,
 * computed from the model built without training (zero weights): what `federate: all` (the paper's
 * Process1) and `federate: head` (Process2) move per agent per round.
 */
export async function runModelInfo(args: string[]): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        model: { type: 'string', default: 'vgg19' },
        size: { type: 'string', default: '224' },
        width: { type: 'string', default: '1' },
        head: { type: 'string', default: 'paper' },
        dropout: { type: 'string' },
        classes: { type: 'string', default: '4' },
        json: { type: 'boolean', default: false },
      },
      strict: true,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message); // cli/main.ts prints it with the valid options (exit code 2)
  }
  const model = values.model as Architecture;
  if (!(architectures as readonly string[]).includes(model)) {
    process.stderr.write(`fedline model-info: --model must be one of ${architectures.join(', ')}\n`);
    process.exitCode = 2;
    return;
  }
  const size = Number(values.size);
  const head: HeadSpec =
    values.head === 'paper'
      ? PAPER_HEAD
      : values.head === 'default'
        ? DEFAULT_HEADS[model]
        : { dense: values.head!.split(',').filter(Boolean).map(Number), dropout: Number(values.dropout ?? '0.5') };
  const { tf } = await loadTf('cpu');
  const sizes = await federationSizes(tf, {
    architecture: model,
    inputShape: [size, size, 3],
    numClasses: Number(values.classes),
    width: Number(values.width),
    head,
  });
  if (values.json) {
    process.stdout.write(JSON.stringify({ model, inputSize: size, width: Number(values.width), head, ...sizes }, null, 2) + '\n');
    return;
  }
  process.stdout.write(
    [
      `${model} at ${size}x${size}x3, width x${values.width}, head dense [${head.dense.join(', ')}] dropout ${head.dropout}, ${values.classes} classes (built with zero weights, not trained)`,
      `parameters: ${sizes.parameters.total.toLocaleString('en')} in all, ${sizes.parameters.head.toLocaleString('en')} in the head`,
      `update per agent per round, federate all  (Process1): ${mb(sizes.updateBytes.all)} (${sizes.tensors.all} tensors, ${sizes.updateBytes.all} bytes)`,
      `update per agent per round, federate head (Process2): ${mb(sizes.updateBytes.head)} (${sizes.tensors.head} tensors, ${sizes.updateBytes.head} bytes)`,
      `global model each agent downloads per round: ${mb(sizes.modelBytes)}`,
    ].join('\n') + '\n',
  );
}
