import type { EvalMetrics } from '../protocol/messages.js';

/**
 * The round schedule shared by the aggregator and the experiment, as pure functions (no I/O):
 * the learning rate announced for a round and the paper's stopping rule.
 */

/**
 * Learning rate of a training round given how many training rounds closed before it:
 * `learningRate * learningRateDecay^trainRoundsBefore` (round 1 trains at the base rate).
 */
export function scheduledLearningRate(learningRate: number, learningRateDecay: number, trainRoundsBefore: number): number {
  return learningRate * learningRateDecay ** trainRoundsBefore;
}

/**
 * The seed paper's stopping rule: the model reaches the target accuracy on every listed site's
 * local test split. A site that reported nothing, or has no test samples, does not meet it.
 */
export function meetsTarget(metrics: Readonly<Record<string, EvalMetrics | undefined>>, sites: readonly string[], target: number | null): boolean {
  if (target === null) return false;
  return sites.every((id) => {
    const m = metrics[id];
    return m !== undefined && m.samples > 0 && m.accuracy >= target;
  });
}
