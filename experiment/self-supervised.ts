import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TfRuntime } from '../training/backend.js';
import type { LocalDataset } from '../training/image-folder.js';
import { buildInitialBundle, type InitialModelSpec } from '../training/initial-model.js';
import { modelFromWeights, saveLayersModelToDir } from '../training/model-io.js';
import { ROTATION_CLASSES, rotationImageSet } from '../training/rotation-set.js';
import { TfjsTrainer, type TrainerOptions } from '../training/tfjs-trainer.js';
import type { GlobalModel } from '../training/trainer.js';
import type { ModelSpec } from '../shared/config/service-config.js';
import { modelMetaSchema } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle } from '../shared/bundle/tensor-bundle.js';
import { runRounds, type RoundRecord } from './rounds.js';

/**
 * The self-supervised site pass: the common start adapted to the sites' own images without a
 * label and without an image leaving its site. Every site trains the whole network on the rotation
 * pretext (training/rotation-set.ts: which quarter turn was applied) on its own training images;
 * the sites' weights are averaged (FedAvg, the federated arms' loop, experiment/rounds.ts) for
 * `rounds` rounds; the result (its rotation head dropped: every arm gets the seeded head) is the
 * base every pretrained arm starts from. What it fixes: a base trained only on reference images
 * has convolutions and batch-normalisation statistics of the reference images; frozen
 * (`federate: head`), the sites' products then reach the head as features it cannot separate.
 */

export interface SelfSupervisedSettings {
  rounds: number;
  epochs: number;
  batchSize: number;
  learningRate: number;
}

export interface SelfSupervisedOptions {
  runtime: TfRuntime;
  /** The federation's model spec; its classes are replaced by the four turns. */
  spec: ModelSpec;
  /** The base it starts from (a tfjs layers folder), or null: the spec's own seeded init. */
  startDir: string | null;
  /** He-normal kernels when there is no start folder (as the pretraining's default). */
  init: 'he' | 'seeded';
  /** Each site's data: only its images are read (train split to learn, test split to report the pretext accuracy). */
  sites: readonly { id: string; data: LocalDataset }[];
  settings: SelfSupervisedSettings;
  trainerOptions: TrainerOptions;
  /** Folder the adapted base goes to (tfjs layers model, usable as `model.initFrom`). */
  out: string;
  onRound?: (r: RoundRecord) => void;
}

/** The rotation pretext data of one site: built from its images only. */
function rotationDataset(data: LocalDataset): LocalDataset {
  const train = rotationImageSet(data.train);
  const test = rotationImageSet(data.test);
  const perTurn = (n: number) => ROTATION_CLASSES.map(() => n);
  return {
    classes: ROTATION_CLASSES,
    train,
    test,
    counts: { train: perTurn(data.train.count), test: perTurn(data.test.count) },
    problems: [],
    decoder: data.decoder,
  };
}

/** Run the pass and save the adapted base in `out`; returns the rounds (pretext accuracy per site). */
export async function selfSupervisedBase(o: SelfSupervisedOptions): Promise<{ dir: string; rounds: RoundRecord[]; trainMs: number }> {
  const started = Date.now();
  const { tf } = o.runtime;
  const spec: InitialModelSpec = { ...o.spec, classes: [...ROTATION_CLASSES], initFrom: o.startDir ?? undefined, ...(o.startDir ? {} : { init: o.init }) };
  const decoded = decodeBundle(await buildInitialBundle(tf, spec), modelMetaSchema);
  const initial: GlobalModel = { version: 0, sha256: '', meta: decoded.header.meta, tensors: bundleTensors(decoded) };
  const participants = o.sites.map((s) => ({ id: s.id, trainer: new TfjsTrainer(o.runtime, rotationDataset(s.data), o.trainerOptions) }));
  const run = await runRounds({
    initial,
    rounds: o.settings.rounds,
    task: {
      epochs: o.settings.epochs,
      batchSize: o.settings.batchSize,
      learningRate: o.settings.learningRate,
      optimizer: 'adam',
      // Every turn has as many images as every other: nothing to weight.
      classWeighting: 'none',
      sampling: 'shuffle',
    },
    learningRateDecay: 1,
    federate: 'all',
    participants,
    federated: true,
    targetAccuracy: null,
    stopAtTarget: false,
    onRound: o.onRound,
  });
  const model = await modelFromWeights(tf, run.final.meta.topology, run.final.tensors);
  try {
    await mkdir(o.out, { recursive: true });
    await saveLayersModelToDir(tf, model, o.out);
  } finally {
    model.dispose();
  }
  const trainMs = Date.now() - started;
  const info = {
    createdAt: new Date().toISOString(),
    pretext: 'rotation',
    startedFrom: o.startDir,
    sites: o.sites.map((s) => s.id),
    ...o.settings,
    pretextAccuracy: run.finalMetrics,
    trainMs,
  };
  await writeFile(join(o.out, 'self-supervised.json'), JSON.stringify(info, null, 2) + '\n');
  return { dir: o.out, rounds: run.rounds, trainMs };
}
