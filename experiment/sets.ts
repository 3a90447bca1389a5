import type { ImageSet, LocalDataset } from '../training/image-folder.js';
import { evaluateOnSet } from '../training/tfjs-trainer.js';
import type { GlobalModel } from '../training/trainer.js';
import type { EvalMetrics } from '../shared/protocol/messages.js';
import type { Tf } from '../training/backend.js';
import { modelFromWeights } from '../training/model-io.js';

/** Several image sets read as one (the centralized arm's pooled training data, the pooled test splits). */
export function concatImageSets(sets: readonly ImageSet[]): ImageSet {
  if (sets.length === 0) throw new RangeError('nothing to concatenate');
  const shape = sets[0]!.shape;
  for (const s of sets) if (s.shape.join('x') !== shape.join('x')) throw new RangeError(`image sets of shapes ${shape.join('x')} and ${s.shape.join('x')}`);
  const count = sets.reduce((n, s) => n + s.count, 0);
  const labels = new Int32Array(count);
  const owner = new Int32Array(count);
  const local = new Int32Array(count);
  let k = 0;
  sets.forEach((s, si) => {
    for (let i = 0; i < s.count; i++, k++) {
      labels[k] = s.labels[i]!;
      owner[k] = si;
      local[k] = i;
    }
  });
  const per = shape[0] * shape[1] * shape[2];
  return {
    count,
    labels,
    shape,
    paths: sets.flatMap((s) => [...s.paths]),
    get cached() {
      return sets.reduce((n, s) => n + s.cached, 0);
    },
    async read(indices, out) {
      for (let j = 0; j < indices.length; j++) {
        const i = indices[j]!;
        await sets[owner[i]!]!.read([local[i]!], out.subarray(j * per, (j + 1) * per));
      }
    },
  };
}

/** The sites' data pooled, for centralized training: every site's own train and test split, unchanged. */
export function pooledDataset(sites: readonly LocalDataset[]): LocalDataset {
  const classes = sites[0]!.classes;
  const sum = (key: 'train' | 'test') => classes.map((_, c) => sites.reduce((n, s) => n + s.counts[key][c]!, 0));
  return {
    classes,
    train: concatImageSets(sites.map((s) => s.train)),
    test: concatImageSets(sites.map((s) => s.test)),
    counts: { train: sum('train'), test: sum('test') },
    problems: sites.flatMap((s) => s.problems),
    decoder: sites[0]!.decoder,
  };
}

/** One model on several image sets (built once): metrics per set id. */
export async function evaluateModel(tf: Tf, model: GlobalModel, sets: readonly { id: string; set: ImageSet }[]): Promise<Record<string, EvalMetrics>> {
  const m = await modelFromWeights(tf, model.meta.topology, model.tensors);
  try {
    const out: Record<string, EvalMetrics> = {};
    for (const { id, set } of sets) out[id] = await evaluateOnSet(tf, m, set, model.meta.normalization, model.meta.classes.length);
    return out;
  } finally {
    m.dispose();
  }
}
