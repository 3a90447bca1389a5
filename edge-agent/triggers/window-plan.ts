/**
 * What an agent does with a round while its training window is shut, pure (times in, decision out):
 *   run      the window is open
 *   wait     it may still open before the round's deadline: wait (at most until the deadline)
 *   give-up  it cannot open in time (the deadline passed, or a schedule keeps it shut past the
 *            deadline): report it instead of waiting for ever, and drop the round
 */
export type WindowPlan = { action: 'run' } | { action: 'wait'; until: number } | { action: 'give-up'; reason: string };

export interface WindowPlanInput {
  now: number;
  /** The round's deadline (epoch ms), as announced. */
  deadlineAt: number;
  open: boolean;
  /** Lower bound on the next opening (see combine.ts openNotBefore); null: unknown, may be any moment. */
  openNotBefore: number | null;
}

const iso = (ms: number) => new Date(ms).toISOString();

export function planWindow(p: WindowPlanInput): WindowPlan {
  if (p.open) return { action: 'run' };
  if (p.now >= p.deadlineAt) return { action: 'give-up', reason: `the training window did not open before the round's deadline ${iso(p.deadlineAt)}` };
  if (p.openNotBefore !== null && p.openNotBefore >= p.deadlineAt) {
    const when = Number.isFinite(p.openNotBefore) ? `opens at ${iso(p.openNotBefore)}` : 'never opens';
    return { action: 'give-up', reason: `the next training window ${when}, after the round's deadline ${iso(p.deadlineAt)}` };
  }
  return { action: 'wait', until: p.deadlineAt };
}
