/**
 * Reconnect delays: exponential (initial * 2^attempt) up to a cap, with "equal jitter" (half
 * fixed, half random) so that many agents that lost the same PLC do not retry in lockstep.
 * Pure: the random source is passed in.
 */
export function backoffDelayMs(attempt: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const exp = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(exp / 2 + (exp / 2) * random());
}
