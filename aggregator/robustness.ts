/**
 * Screening of poisoned updates, pure logic. An update that moves the model far more than the
 * others do (a scaled or random attack, a diverged client) is refused before averaging: its
 * change ||w_k - w_base|| is compared with the median change of the *other* updates of the round
 * (leave-one-out, so that with two clients the attacker cannot drag the median up with itself).
 *
 * Honest changes can differ by 100x late in training (one site has converged, another has not),
 * so the reference never drops below a floor of `floorFraction` x ||w_base||: a change smaller
 * than maxNormRatio x that floor (10% of the model's norm with the defaults) is always accepted.
 */
export interface NormVerdict {
  agent: string;
  norm: number;
  /** Median norm of the other updates (null: nothing to compare with). */
  referenceNorm: number | null;
  accepted: boolean;
  reason: string | null;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export const DEFAULT_NORM_FLOOR_FRACTION = 0.01;

export function screenUpdateNorms(
  norms: ReadonlyMap<string, number>,
  options: { maxNormRatio: number | null; maxNorm: number | null; baseNorm: number; floorFraction?: number },
): NormVerdict[] {
  const floor = (options.floorFraction ?? DEFAULT_NORM_FLOOR_FRACTION) * options.baseNorm;
  const entries = [...norms.entries()].sort(([a], [b]) => a.localeCompare(b));
  return entries.map(([agent, norm]) => {
    const others = entries.filter(([a]) => a !== agent).map(([, n]) => n);
    const referenceNorm = others.length ? Math.max(median(others), floor) : null;
    if (!Number.isFinite(norm)) return { agent, norm, referenceNorm, accepted: false, reason: 'the update norm is not finite' };
    if (options.maxNorm !== null && norm > options.maxNorm) {
      return {
        agent,
        norm,
        referenceNorm,
        accepted: false,
        reason: `update changes the model by ${norm.toPrecision(4)} (L2), above the limit of ${options.maxNorm}`,
      };
    }
    if (options.maxNormRatio !== null && referenceNorm !== null && referenceNorm > 0 && norm > options.maxNormRatio * referenceNorm) {
      return {
        agent,
        norm,
        referenceNorm,
        accepted: false,
        reason: `update changes the model by ${norm.toPrecision(4)} (L2), ${(norm / referenceNorm).toFixed(1)}x the reference change ${referenceNorm.toPrecision(4)} (the median of the other updates, at least ${options.floorFraction ?? DEFAULT_NORM_FLOOR_FRACTION} of the model's norm ${options.baseNorm.toPrecision(4)}); limit ${options.maxNormRatio}x`,
      };
    }
    return { agent, norm, referenceNorm, accepted: true, reason: null };
  });
}

/** The largest sample count an agent may claim, or null when unlimited. */
export function sampleLimit(
  agent: string,
  options: { maxSamplesPerAgent: number | null; registeredSamples: Readonly<Record<string, number>>; registeredTolerance: number },
): number | null {
  const registered = options.registeredSamples[agent];
  const fromRegistry = registered !== undefined ? Math.floor(registered * (1 + options.registeredTolerance)) : null;
  if (fromRegistry === null) return options.maxSamplesPerAgent;
  if (options.maxSamplesPerAgent === null) return fromRegistry;
  return Math.min(fromRegistry, options.maxSamplesPerAgent);
}
