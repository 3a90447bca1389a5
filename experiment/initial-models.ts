import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PRETRAIN_INFO_FILE, pretrainBase, REFERENCE_AUGMENTATION } from '../training/pretrain.js';
import type { GlobalModel } from '../training/trainer.js';
import type { Tf, TfRuntime } from '../training/backend.js';
import type { LocalDataset } from '../training/image-folder.js';
import type { TrainerOptions } from '../training/tfjs-trainer.js';
import { buildInitialBundle } from '../training/initial-model.js';
import type { ModelSpec } from '../shared/config/service-config.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { modelMetaSchema, type EvalMetrics, type ModelMeta } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import type { ExperimentConfig } from './config.js';
import type { ExperimentResults, SelfSupervisedSummary } from './results.js';
import { selfSupervisedBase } from './self-supervised.js';

/**
 * The common initial weights: the pretrained base (reused from its folder, or trained here on
 * the reference images) and the two version-0 models every arm starts from.
 */

/** The pretrained base's folder (configured, or named after the model under `out`); null without pretraining. */
export function pretrainedDirOf(config: ExperimentConfig): string | null {
  if (!config.pretrained) return null;
  const m = config.model;
  return config.pretrained.dir ?? join(config.out, `pretrained-${m.architecture}${m.batchNorm ? '-bn' : ''}-w${m.width}-${m.inputShape[0]}px`);
}

/** Whether the pretrained base must be trained (no model.json in its folder yet). */
export function needsPretraining(config: ExperimentConfig, pretrainedDir: string | null): boolean {
  return config.pretrained !== null && !existsSync(join(pretrainedDir!, 'model.json'));
}

/** Reuse the pretrained base in `pretrainedDir`, or train it on `referenceDir` and save it there. */
export async function preparePretrained(
  config: ExperimentConfig,
  spec: ModelSpec,
  pretrainedDir: string | null,
  needPretraining: boolean,
  referenceDir: string | null,
  say: (line: string) => void,
): Promise<ExperimentResults['pretrained']> {
  if (!config.pretrained || !pretrainedDir) return null;
  const infoFile = join(pretrainedDir, PRETRAIN_INFO_FILE);
  if (!needPretraining) {
    const info = existsSync(infoFile) ? (JSON.parse(await readFile(infoFile, 'utf8')) as Record<string, unknown>) : null;
    say(
      `pretrained base: reusing ${pretrainedDir}${info ? ` (made ${String(info.createdAt)}, accuracy ${Number((info.metrics as EvalMetrics | undefined)?.accuracy ?? NaN).toFixed(3)} on held-out reference images)` : ''}`,
    );
    return { dir: pretrainedDir, reused: true, info };
  }
  if (!referenceDir)
    throw new FedlineError(
      ErrorCodes.CONFIG_INVALID,
      `pretrained: ${pretrainedDir} has no model.json; give pretrained.data (reference images) to make one, or pretrained: null`,
    );
  const epochs = config.pretrained.epochs;
  say(`pretrained base: training a ${spec.architecture} on the reference images in ${referenceDir} (${epochs} epochs)`);
  const r = await pretrainBase({
    dataDir: referenceDir,
    model: spec,
    epochs,
    batchSize: config.pretrained.batchSize,
    learningRate: config.pretrained.learningRate,
    learningRateDecay: config.pretrained.learningRateDecay,
    keepBest: config.pretrained.keepBest,
    init: config.pretrained.init,
    ...(config.pretrained.augmentation ? { augmentation: REFERENCE_AUGMENTATION } : {}),
    out: pretrainedDir,
    onEpoch: (e, loss) => say(`  pretrain epoch ${e}/${epochs}: loss ${loss?.toFixed(4) ?? '-'}`),
  });
  const info = JSON.parse(await readFile(infoFile, 'utf8')) as Record<string, unknown>;
  const kept = r.best ? ` (epoch ${r.best.epoch} of ${r.best.lastEpoch}, kept as the best on them)` : '';
  say(
    `pretrained base: accuracy ${r.metrics.accuracy.toFixed(3)} on held-out reference images${kept}, ${(r.trainMs / 1000).toFixed(1)} s; saved in ${pretrainedDir}`,
  );
  return { dir: pretrainedDir, reused: false, info };
}

function toModel(bundle: Uint8Array): GlobalModel {
  const d = decodeBundle<ModelMeta>(bundle, modelMetaSchema);
  return { version: 0, sha256: '', meta: d.header.meta, tensors: bundleTensors(d) };
}

export interface InitialModels {
  /** The spec the pretrained arms start from (the aggregator's model with initFrom). */
  pretrainedSpec: ModelSpec;
  pretrained: GlobalModel;
  /** The seeded init without pretraining (federated-random). */
  random: GlobalModel;
}

/** Version 0 of every arm: from the pretrained base (when there is one) and from the seeded init. */
export async function buildInitialModels(tf: Tf, spec: ModelSpec, pretrainedDir: string | null): Promise<InitialModels> {
  const pretrainedSpec: ModelSpec = pretrainedDir ? { ...spec, initFrom: pretrainedDir } : spec;
  const pretrained = toModel(await buildInitialBundle(tf, pretrainedSpec));
  const random = toModel(await buildInitialBundle(tf, spec));
  return { pretrainedSpec, pretrained, random };
}

/**
 * The self-supervised site pass when configured (pretrained.selfSupervised): the base adapted to
 * the sites' unlabelled images, saved under `<out>/self-supervised-base` and made afresh every run
 * (it depends on the sites' images). Returns its folder, or null when not configured.
 */
export async function adaptBaseToSites(
  config: ExperimentConfig,
  runtime: TfRuntime,
  spec: ModelSpec,
  pretrainedDir: string | null,
  sites: readonly { id: string; data: LocalDataset }[],
  trainerOptions: TrainerOptions,
  say: (line: string) => void,
): Promise<SelfSupervisedSummary | null> {
  const settings = config.pretrained?.selfSupervised;
  if (!settings) return null;
  const out = join(config.out, 'self-supervised-base');
  await rm(out, { recursive: true, force: true });
  say(
    `self-supervised site pass: rotation pretext on each site's own training images (no labels, no image leaves its site), ${settings.rounds} rounds x ${settings.epochs} epochs, weights averaged`,
  );
  const r = await selfSupervisedBase({
    runtime,
    spec,
    startDir: pretrainedDir,
    init: config.pretrained?.init ?? 'he',
    sites,
    settings,
    trainerOptions,
    out,
    onRound: (rec) =>
      say(
        `  self-supervised round ${rec.round}: pretext accuracy before ${Object.entries(rec.baseMetrics)
          .map(([id, m]) => `${id} ${m.accuracy.toFixed(3)}`)
          .join(', ')}`,
      ),
  });
  const final = Object.values(JSON.parse(await readFile(join(out, 'self-supervised.json'), 'utf8')).pretextAccuracy as Record<string, EvalMetrics>);
  const accuracy = final.reduce((a, m) => a + m.accuracy, 0) / Math.max(1, final.length);
  say(`self-supervised base: mean pretext accuracy ${accuracy.toFixed(3)} on the sites' test splits, ${(r.trainMs / 1000).toFixed(1)} s; saved in ${out}`);
  return {
    dir: out,
    settings,
    trainMs: r.trainMs,
    pretextAccuracy: r.rounds.map((rec) => Object.fromEntries(Object.entries(rec.baseMetrics).map(([id, m]) => [id, m.accuracy]))),
    finalPretextAccuracy: accuracy,
  };
}
