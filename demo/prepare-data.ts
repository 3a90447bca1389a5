import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { generateDataset, generateReferenceDataset, INSPECTION_CLASSES, PAPER_CLIENTS } from '../synthetic-data/generate.js';
import type { DemoDirs, DemoOptions, Say } from './demo-options.js';

/** The folders of one demo run under `out`, emptied: only the folders the demo owns are replaced; anything else under --out is left alone. */
export async function prepareFolders(out: string): Promise<DemoDirs> {
  const dirs = { data: join(out, 'data'), state: join(out, 'state'), config: join(out, 'config'), logs: join(out, 'logs') };
  for (const d of Object.values(dirs)) await rm(d, { recursive: true, force: true });
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
  return dirs;
}

/**
 * The agents' generated images, and (with --pretrain-epochs and no --init-from) a base model
 * pretrained in this process on reference images of other products. Returns where the
 * federation's initial weights come from (options.initFrom, the pretrained base or null).
 */
export async function prepareData(options: DemoOptions, dirs: DemoDirs, say: Say): Promise<string | null> {
  say(
    `model ${options.model}${options.model !== 'small-cnn' ? ` (width x${options.width})` : ''}, federate ${options.federate} ` +
      `(${options.federate === 'all' ? "every weight trains and travels: the paper's Process1" : "feature extractor frozen, only the head trains and travels: the paper's Process2"})` +
      `${options.initFrom ? `, initial weights from ${options.initFrom}` : ''}`,
  );
  say(`generating ${PAPER_CLIENTS.length} clients' inspection images (${options.size}x${options.size} px, seed ${options.seed}) in ${dirs.data}`);
  const data = await generateDataset({ out: dirs.data, seed: options.seed, size: options.size, scale: options.scale });
  for (const c of data.clients)
    say(
      `  ${c.name}: ${Object.entries(c.counts)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    );
  if (options.pretrainEpochs > 0 && !options.initFrom) return pretrainDemoBase(options, dirs, say);
  return options.initFrom;
}

async function pretrainDemoBase(options: DemoOptions, dirs: DemoDirs, say: Say): Promise<string> {
  const refDir = join(options.out, 'reference-data');
  const baseDir = join(dirs.state, 'pretrained-base');
  await rm(refDir, { recursive: true, force: true });
  const ref = await generateReferenceDataset({ out: refDir, seed: options.seed + 1, size: options.size, scale: options.scale });
  say(
    `pretraining a ${options.model} base on ${ref.files} reference images of other products (${options.pretrainEpochs} epochs, in this process) in ${refDir}`,
  );
  const { pretrainBase } = await import('../training/pretrain.js');
  const r = await pretrainBase({
    dataDir: refDir,
    model: {
      architecture: options.model,
      width: options.width,
      inputShape: [options.size, options.size, 3],
      classes: [...INSPECTION_CLASSES],
      seed: options.seed,
      normalization: 'per-image',
    },
    epochs: options.pretrainEpochs,
    batchSize: 32,
    learningRate: options.learningRate,
    out: baseDir,
  });
  say(
    `pretrained base: accuracy ${r.metrics.accuracy.toFixed(3)} on held-out reference images, ${(r.trainMs / 1000).toFixed(1)} s (${r.backend}); the federation starts from it (${baseDir}), with a new seeded head`,
  );
  return baseDir;
}
