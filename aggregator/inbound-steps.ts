/**
 * Inbound messages are handled as a named list of steps, the way Aedes runs its publish actions:
 * each step checks or does one thing; a step rejects the message by throwing (a FedlineError
 * names the cause with its code) or ends the handling quietly by returning 'done'. The names say,
 * in logs and tests, which check a message failed.
 */
export interface Step<C> {
  readonly name: string;
  run(ctx: C): 'done' | void;
  /** Besides the usual reject (log, count), what to do when this step rejects (e.g. tell the sender). */
  onReject?(ctx: C, err: unknown): void;
}

/** What happens to a rejected message: log, count and drop (never throws). */
export type RejectHook<C> = (ctx: C, err: unknown, step: string) => void;

/** Run the steps in order until one ends the handling or rejects. */
export function runSteps<C>(steps: readonly Step<C>[], ctx: C, reject: RejectHook<C>): void {
  for (const step of steps) {
    try {
      if (step.run(ctx) === 'done') return;
    } catch (err) {
      reject(ctx, err, step.name);
      step.onReject?.(ctx, err);
      return;
    }
  }
}
