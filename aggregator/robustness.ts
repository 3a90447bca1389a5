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

/** Ascending, NaN last: a total order, so a NaN among the values cannot scramble the sort. */
function ascendingNaNLast(a: number, b: number): number {
  if (Number.isNaN(a)) return Number.isNaN(b) ? 0 : 1;
  if (Number.isNaN(b)) return -1;
  return a - b;
}

/**
 * For each value, the median of all the *other* values (leave-one-out), in O(N log N) with one
 * sort: leaving out the value at sorted position j shifts the positions above j down by one, so
 * each median is read from the one sorted list. Equal values are interchangeable, so which of
 * them is left out does not matter. The same numbers as sorting the others for each value, which
 * is O(N^2 log N) (90,000 values sorted per round at 300 sites). NaN if `values` has a single element.
 */
export function leaveOneOutMedians(values: readonly number[]): number[] {
  const order = values.map((_, i) => i).sort((a, b) => ascendingNaNLast(values[a]!, values[b]!));
  const sorted = order.map((i) => values[i]!);
  const rank = new Array<number>(values.length);
  order.forEach((i, j) => (rank[i] = j));
  const m = values.length - 1; // how many others
  const mid = m >> 1;
  return values.map((_, i) => {
    if (m === 0) return NaN;
    const j = rank[i]!;
    const at = (k: number): number => sorted[k < j ? k : k + 1]!;
    return m % 2 ? at(mid) : (at(mid - 1) + at(mid)) / 2;
  });
}

export const DEFAULT_NORM_FLOOR_FRACTION = 0.01;

export function screenUpdateNorms(
  norms: ReadonlyMap<string, number>,
  options: { maxNormRatio: number | null; maxNorm: number | null; baseNorm: number; floorFraction?: number },
): NormVerdict[] {
  const floor = (options.floorFraction ?? DEFAULT_NORM_FLOOR_FRACTION) * options.baseNorm;
  const entries = [...norms.entries()].sort(([a], [b]) => a.localeCompare(b));
  const medians = leaveOneOutMedians(entries.map(([, n]) => n));
  return entries.map(([agent, norm], i) => {
    const referenceNorm = entries.length > 1 ? Math.max(medians[i]!, floor) : null;
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

/** Default `maxSampleClaimRatio`: a claim counts for at most 3x the median claim of the round's other updates. */
export const DEFAULT_SAMPLE_CLAIM_RATIO = 3;

export interface SampleClip {
  agent: string;
  claimed: number;
  /** The count the aggregation uses: min(claimed, limit). */
  used: number;
  /** The bound applied (null: none applied, e.g. the only update of the round). */
  limit: number | null;
  /** Where the bound comes from. */
  basis: 'registered' | 'median' | null;
  clipped: boolean;
}

/**
 * Bounds each accepted update's sample count before it weighs in FedAvg, pure logic. A site with a
 * registered count (registeredSamples, or maxSamplesPerAgent) was already refused at arrival above
 * it; every other site's claim is clipped to `ratio` x the median claim of the round's *other*
 * updates (leave-one-out, so a liar cannot raise its own bound; the sites with a registered count
 * count with their claims, which are bounded). With a single update, or ratio null, nothing is clipped.
 *
 * Why 3 by default: sites of one factory differ in size, but rarely by more than a few times; a
 * clipped honest site is not refused, it only weighs a little less. A liar claiming 1e6 samples
 * among sites of ~100 weighs at most 3 / (3 + others) instead of 99.99%.
 */
export function clipSampleClaims(
  claims: ReadonlyMap<string, number>,
  options: { ratio: number | null; registeredSamples: Readonly<Record<string, number>>; maxSamplesPerAgent: number | null },
): SampleClip[] {
  const entries = [...claims.entries()].sort(([a], [b]) => a.localeCompare(b));
  const medians = leaveOneOutMedians(entries.map(([, n]) => n));
  return entries.map(([agent, claimed], i) => {
    if (Object.hasOwn(options.registeredSamples, agent) || options.maxSamplesPerAgent !== null) {
      return { agent, claimed, used: claimed, limit: null, basis: 'registered', clipped: false };
    }
    if (options.ratio === null || entries.length < 2) return { agent, claimed, used: claimed, limit: null, basis: null, clipped: false };
    const limit = Math.max(1, Math.floor(options.ratio * medians[i]!));
    const used = Math.min(claimed, limit);
    return { agent, claimed, used, limit, basis: 'median', clipped: used < claimed };
  });
}
