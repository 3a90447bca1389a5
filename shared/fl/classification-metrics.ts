import type { EvalMetrics } from '../protocol/messages.js';

/**
 * Classification metrics from true and predicted class indices. Inspection data is imbalanced
 * (few defects, many good parts), so balanced accuracy (the mean of per-class recall over the
 * classes present) and per-class recall are reported next to plain accuracy.
 */
export function classificationMetrics(labels: ArrayLike<number>, predictions: ArrayLike<number>, numClasses: number, loss: number | null = null): EvalMetrics {
  if (labels.length !== predictions.length) throw new RangeError(`${labels.length} labels but ${predictions.length} predictions`);
  const confusion = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  let correct = 0;
  for (let i = 0; i < labels.length; i++) {
    const t = labels[i]!;
    const p = predictions[i]!;
    if (t < 0 || t >= numClasses || p < 0 || p >= numClasses) throw new RangeError(`class index out of range at ${i}: label ${t}, prediction ${p}`);
    confusion[t]![p]!++;
    if (t === p) correct++;
  }
  const recall: (number | null)[] = [];
  const precision: (number | null)[] = [];
  for (let c = 0; c < numClasses; c++) {
    const actual = confusion[c]!.reduce((s, v) => s + v, 0);
    let predicted = 0;
    for (let r = 0; r < numClasses; r++) predicted += confusion[r]![c]!;
    recall.push(actual > 0 ? confusion[c]![c]! / actual : null);
    precision.push(predicted > 0 ? confusion[c]![c]! / predicted : null);
  }
  const present = recall.filter((r): r is number => r !== null);
  return {
    samples: labels.length,
    loss: loss !== null && Number.isFinite(loss) ? loss : null,
    accuracy: labels.length ? correct / labels.length : 0,
    balancedAccuracy: present.length ? present.reduce((s, v) => s + v, 0) / present.length : 0,
    confusion,
    precision,
    recall,
  };
}

/**
 * Several sites' metrics on their own test splits pooled into one, as if one site had held all
 * their test images: confusion matrices add up, the rates follow from the sum, and the loss is the
 * sample-weighted mean (null when a site reported none). A plant reports its lines this way upstream.
 */
export function pooledMetrics(parts: readonly EvalMetrics[]): EvalMetrics {
  if (parts.length === 0) throw new RangeError('no metrics to pool');
  const numClasses = parts[0]!.confusion.length;
  const confusion = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  for (const m of parts) {
    if (m.confusion.length !== numClasses) throw new RangeError(`confusion matrices of ${numClasses} and ${m.confusion.length} classes cannot be pooled`);
    m.confusion.forEach((row, t) => row.forEach((n, p) => (confusion[t]![p]! += n)));
  }
  const samples = parts.reduce((s, m) => s + m.samples, 0);
  const lossKnown = parts.every((m) => m.loss !== null);
  const loss = lossKnown && samples > 0 ? parts.reduce((s, m) => s + m.loss! * m.samples, 0) / samples : null;
  const labels: number[] = [];
  const predictions: number[] = [];
  confusion.forEach((row, t) =>
    row.forEach((n, p) => {
      for (let i = 0; i < n; i++) {
        labels.push(t);
        predictions.push(p);
      }
    }),
  );
  return classificationMetrics(labels, predictions, numClasses, loss);
}
