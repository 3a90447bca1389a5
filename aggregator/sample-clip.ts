import type { AggregatorContext } from './aggregator-context.js';
import { clipSampleClaims, DEFAULT_SAMPLE_CLAIM_RATIO } from './robustness.js';
import type { SpooledUpdate } from './update-spool.js';

export const SAMPLES_CLIPPED = 'FL_SAMPLES_CLIPPED';

/**
 * The round's accepted updates with their sample counts bounded (aggregator/robustness.ts
 * clipSampleClaims) before they weigh in the average; each clipped claim is logged, counted and
 * raised as an `alert` event (code FL_SAMPLES_CLIPPED). The spool keeps the claims as sent.
 */
export function clipSampleCounts(ctx: AggregatorContext, round: number, accepted: readonly SpooledUpdate[]): SpooledUpdate[] {
  const { config } = ctx;
  // Configs built in code (tests) may lack the field: the schema's default then.
  const ratio = config.maxSampleClaimRatio === undefined ? DEFAULT_SAMPLE_CLAIM_RATIO : config.maxSampleClaimRatio;
  const clips = clipSampleClaims(new Map(accepted.map((u) => [u.agent, u.sampleCount])), {
    ratio,
    registeredSamples: config.registeredSamples,
    maxSamplesPerAgent: config.maxSamplesPerAgent,
  });
  const used = new Map<string, number>();
  for (const c of clips) {
    used.set(c.agent, c.used);
    if (!c.clipped) continue;
    const message = `update of ${c.agent} claims ${c.claimed} training samples; it weighs as ${c.used} (${ratio}x the median claim of the round's other updates; register the site's count in registeredSamples to lift this)`;
    ctx.counters.inc(SAMPLES_CLIPPED);
    ctx.log.warn({ round, agent: c.agent, claimed: c.claimed, used: c.used, code: SAMPLES_CLIPPED }, message);
    ctx.emitEvent('alert', { severity: 'warning', code: SAMPLES_CLIPPED, agent: c.agent, round, message });
  }
  return accepted.map((u) => (used.get(u.agent) === u.sampleCount ? u : { ...u, sampleCount: used.get(u.agent)! }));
}
