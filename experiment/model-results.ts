import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FsModelStore } from '../aggregator/model-store.js';
import type { ImageSet } from '../training/image-folder.js';
import type { Tf } from '../training/backend.js';
import type { GlobalModel } from '../training/trainer.js';
import type { ModelSpec } from '../shared/config/service-config.js';
import { encodeBundle } from '../shared/bundle/tensor-bundle.js';
import { renderConfusionPng } from './confusion-png.js';
import type { ModelResult } from './results.js';
import { evaluateModel } from './sets.js';

/** A trained model's record before its evaluation: what the arm runner knows. */
type TrainedModel = Omit<ModelResult, 'eval' | 'confusionPngs' | 'msPerLocalEpoch'>;

const safeName = (id: string) => id.replace(/[^A-Za-z0-9_.-]+/g, '-');

/** Save a final model as version 0 of a fresh model store in `dir`; returns the version's folder. */
export async function saveModel(dir: string, final: GlobalModel): Promise<string> {
  const store = new FsModelStore(dir);
  await rm(dir, { recursive: true, force: true });
  const stored = await store.save(encodeBundle(final.tensors, final.meta));
  return store.dir(stored.version);
}

/**
 * Evaluates every final model on every test set, draws its confusion matrices (under
 * `<out>/confusion`) and collects the results, in the order the arms finish.
 */
export class ModelResults {
  readonly models: ModelResult[] = [];

  constructor(
    private readonly o: {
      tf: Tf;
      out: string;
      experimentName: string;
      spec: ModelSpec;
      classes: readonly string[];
      allSets: readonly { id: string; set: ImageSet }[];
      siteTests: readonly { id: string }[];
      say: (line: string) => void;
    },
  ) {}

  async add(m: TrainedModel, final: GlobalModel): Promise<void> {
    const { tf, out, say } = this.o;
    const evals = await evaluateModel(tf, final, this.o.allSets);
    const confusionPngs: Record<string, string> = {};
    await mkdir(join(out, 'confusion'), { recursive: true });
    for (const id of ['local-test', ...this.o.siteTests.map((s) => s.id), 'external', 'probes']) {
      const e = evals[id];
      if (!e) continue;
      const file = join('confusion', `${safeName(m.id)}--${safeName(id)}.png`);
      await writeFile(
        join(out, file),
        renderConfusionPng({
          title: `${m.id} on ${id}`,
          subtitle: `${this.o.experimentName}: ${this.o.spec.architecture}, ${m.roundsRun} rounds x ${m.localSteps !== null ? `${m.localSteps} steps` : `${m.epochsPerRound} epochs`}`,
          classes: [...this.o.classes],
          confusion: e.confusion,
        }),
      );
      confusionPngs[id] = file;
    }
    const perEpoch = m.localSteps !== null ? [] : m.rounds.flatMap((r) => Object.values(r.trainMs).map((ms) => ms / m.epochsPerRound));
    const result: ModelResult = {
      ...m,
      eval: evals,
      confusionPngs,
      msPerLocalEpoch: perEpoch.length ? perEpoch.reduce((a, b) => a + b, 0) / perEpoch.length : null,
    };
    this.models.push(result);
    const acc = (id: string) => (evals[id] ? evals[id]!.accuracy.toFixed(3) : '-');
    say(`  ${m.id}: local test ${acc('local-test')}, external ${acc('external')}, probes ${acc('probes')}, rounds to target ${m.roundsToTarget ?? '-'}`);
  }
}
