import { resolveFederated } from '../shared/fl/federated-set.js';
import type { Logger } from '../shared/util/logger.js';
import type { EvalMetrics, RoundAnnouncement, UpdateMeta } from '../shared/protocol/messages.js';
import type { BundleSource, FileBundleSource } from '../shared/bundle/bundle-source.js';
import { encodeUpdateSource, tensorValues } from '../shared/bundle/encoded-update.js';
import type { BatchBoundary, GlobalModel, ScaffoldControl, Trainer, TrainProgress, TrainResult } from '../training/trainer.js';
import type { StatusPatch } from './agent-status.js';
import type { TrainingWindow } from './training-window.js';

/** The upload id and SHA-256 of an update recorded on disk (so that a restart resumes the upload). */
type SavedUpload = { sha256: string; upload: string };

/** An update ready to send: made now, or saved before a restart (`resumedFrom`: its file, closed once sent). */
export interface LocalUpdate {
  bundle: BundleSource;
  saved: SavedUpload | null;
  resumedFrom: FileBundleSource | null;
}

interface LocalUpdateDeps {
  agentId: string;
  /** The box's training window (edge-agent/triggers); null: training may run at any time. */
  window: TrainingWindow | null;
  log: Logger;
  setStatus: (patch: StatusPatch, force?: boolean) => Promise<void>;
  /** Whether the agent's status still says training (progress is reported only then). */
  isTraining: () => boolean;
}

/**
 * One round's local training from the global model (paused and resumed with the training window,
 * progress in the status) and its update, encoded chunk by chunk as it is read (f32/f16/q8,
 * optionally as a difference to the base).
 */
export async function trainLocalUpdate(
  d: LocalUpdateDeps,
  trainer: Trainer,
  model: GlobalModel,
  ann: RoundAnnouncement,
  metricsBefore: EvalMetrics,
  signal: AbortSignal,
  /** SCAFFOLD rounds: the variates to train with, and where c_i+ goes once training is done. */
  scaffold: { control: ScaffoldControl; keep: (result: TrainResult) => Promise<void> } | null = null,
): Promise<BundleSource> {
  const { round } = ann;
  const { log } = d;
  const federatedNames = resolveFederated(
    ann.task.federated,
    model.tensors.map((t) => t.name),
    model.meta.headTensors,
  );
  const work = ann.task.localSteps === undefined ? `${ann.task.epochs} epoch(s)` : `${ann.task.localSteps} step(s)`;
  await d.setStatus({ state: 'training', round, progress: 0, detail: `${work} on ${trainer.samples.train} images` }, true);
  const onProgress = (p: TrainProgress) => {
    if (!d.isTraining()) return;
    // Optimizer steps done of the round's steps: the same fraction whether the task counts epochs or localSteps.
    d.setStatus({
      progress: p.step / p.steps,
      detail: `${positionOf(p)}${p.loss !== null ? `, loss ${p.loss.toFixed(4)}` : ''}`,
    }).catch(() => undefined);
  };
  const result = d.window
    ? await d.window.train(trainer, model, ann.task, federatedNames, {
        signal,
        deadlineAt: ann.deadlineAt,
        onProgress,
        ...(scaffold ? { control: scaffold.control } : {}),
        onPaused: (at, why) => {
          log.info({ epoch: at.epoch, batch: at.batch, step: at.step }, 'training paused at a batch boundary: the training window closed');
          d.setStatus({ state: 'paused', detail: `paused before ${positionOf(at)}: ${why}` }, true).catch(() => undefined);
        },
        onResumed: (at) => {
          log.info({ epoch: at.epoch, batch: at.batch, step: at.step }, 'training resumed: the training window opened');
          d.setStatus({ state: 'training', detail: `resumed at ${positionOf(at)}` }, true).catch(() => undefined);
        },
      })
    : await trainer.train(model, ann.task, federatedNames, { signal, onProgress, ...(scaffold ? { control: scaffold.control } : {}) });
  await scaffold?.keep(result);
  log.info({ trainMs: result.trainMs, accuracyAfter: result.metricsAfter.accuracy, samples: result.sampleCount }, 'local training done');
  const meta: UpdateMeta = {
    kind: 'update',
    agent: d.agentId,
    round,
    baseVersion: model.version,
    sampleCount: result.sampleCount,
    epochs: ann.task.epochs,
    metricsBefore,
    metricsAfter: result.metricsAfter,
    trainMs: result.trainMs,
    backend: trainer.backend,
    delta: ann.delta,
    ...(scaffold ? { steps: result.steps } : {}),
  };
  return encodeUpdateSource(result.tensors.map(tensorValues), meta, {
    encoding: ann.encoding,
    delta: ann.delta,
    base: new Map(model.tensors.map((t) => [t.name, t.data])),
  });
}

/** Where training stands, as the status detail says it: epoch and batch, and the step of the round's steps. */
function positionOf(p: BatchBoundary): string {
  return `epoch ${p.epoch}/${p.epochs}, batch ${p.batch}/${p.batchesPerEpoch} (step ${p.step}/${p.steps})`;
}
