import type { SourceCallbacks, TriggerSource } from '../source.js';

/** Training allowed at any time (the default trigger: today's behaviour). */
export class AlwaysSource implements TriggerSource {
  readonly id = 'always';

  async start(callbacks: SourceCallbacks): Promise<void> {
    callbacks.update({ state: 'open', detail: 'always open' });
  }

  async stop(): Promise<void> {}

  openNotBefore(now: number): number {
    return now;
  }
}
