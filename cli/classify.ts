import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { UsageError } from './option-checks.js';
import { openClassifier } from '../training/classifier.js';
import { createImageDecoder } from '../training/images.js';
import { backendPreferences, type BackendPreference } from '../shared/config/service-config.js';
import { normalizationModes, type NormalizationMode } from '../shared/protocol/messages.js';
import { loadTf } from '../training/backend.js';
import { CLASSIFY_USAGE as USAGE } from './usage.js';

/**
 * `fedline classify --model DIR IMAGE...`: the predicted class and its confidence for each image
 * (the seed paper's live classification); `--json` prints one JSON document for machines.
 * Exit code 0 when every image was classified, 1 when some could not be read, 2 on bad usage.
 */
export async function runClassify(args: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        model: { type: 'string', short: 'm' },
        json: { type: 'boolean', default: false },
        backend: { type: 'string', default: 'auto' },
        classes: { type: 'string' },
        normalization: { type: 'string' },
      },
      strict: true,
    });
  } catch (err) {
    throw new UsageError((err as Error).message); // cli/main.ts prints it with the valid options (exit code 2)
  }
  const { values, positionals } = parsed;
  const fail = (msg: string) => {
    process.stderr.write(`fedline classify: ${msg}\n${USAGE}\n`);
    process.exitCode = 2;
  };
  if (!values.model) return fail('--model DIR is required');
  if (positionals.length === 0) return fail('give at least one image');
  if (!(backendPreferences as readonly string[]).includes(values.backend!)) return fail(`--backend must be one of ${backendPreferences.join(', ')}`);
  if (values.normalization && !(normalizationModes as readonly string[]).includes(values.normalization))
    return fail(`--normalization must be one of ${normalizationModes.join(', ')}`);
  const runtime = await loadTf(values.backend as BackendPreference);
  const classifier = await openClassifier(runtime.tf, resolve(values.model), await createImageDecoder(), {
    ...(values.classes ? { classes: values.classes.split(',') } : {}),
    ...(values.normalization ? { normalization: values.normalization as NormalizationMode } : {}),
  });
  try {
    const results = await classifier.classify(positionals);
    if (values.json) {
      process.stdout.write(
        JSON.stringify({ model: resolve(values.model), version: classifier.version, classes: classifier.classes, backend: runtime.backend, results }, null, 2) +
          '\n',
      );
    } else {
      const width = Math.max(...results.map((r) => r.path.length), 5);
      for (const r of results) {
        if (r.error) process.stdout.write(`${r.path.padEnd(width)}  ERROR  ${r.error}\n`);
        else
          process.stdout.write(
            `${r.path.padEnd(width)}  ${r.class!.padEnd(Math.max(...classifier.classes.map((c) => c.length)))}  confidence ${r.confidence!.toFixed(3)}\n`,
          );
      }
    }
    if (results.some((r) => r.error)) process.exitCode = 1;
  } finally {
    classifier.dispose();
  }
}
