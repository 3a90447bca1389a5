import type { ControlVerb, FederationRunState } from '../shared/protocol/mes.js';

/**
 * How the aggregator runs the federation, as decided by MES commands; pure (no I/O):
 *   running  rounds follow one another
 *   paused   the open round goes on (agents pause their training on the same command); no new
 *            round starts until `resume`
 *   stopped  the open round is closed without aggregation; no round starts until `start`
 *   complete the federation has ended; commands that would change it are refused
 * Commands are idempotent: pausing a paused federation is accepted and changes nothing.
 */
export interface ControlResult {
  status: 'accepted' | 'rejected';
  detail: string;
  /** The state before and after. */
  from: FederationRunState;
  to: FederationRunState;
}

export class FederationControl {
  private value: FederationRunState;

  constructor(initial: FederationRunState) {
    this.value = initial;
  }

  get state(): FederationRunState {
    return this.value;
  }

  /** The federation finished its rounds: from now on only the manifest request is answered. */
  complete(): void {
    this.value = 'complete';
  }

  apply(verb: ControlVerb): ControlResult {
    const from = this.value;
    const ok = (to: FederationRunState, detail: string): ControlResult => {
      this.value = to;
      return { status: 'accepted', detail, from, to };
    };
    const no = (detail: string): ControlResult => ({ status: 'rejected', detail, from, to: from });
    if (verb === 'model-manifest') return ok(from, 'the current model manifest follows as a model-manifest event');
    if (from === 'complete') return no('the federation is complete; nothing to start, pause, resume or stop');
    switch (verb) {
      case 'start':
        if (from === 'running') return ok('running', 'already running');
        if (from === 'paused') return no('the federation is paused: send resume');
        return ok('running', 'rounds start again');
      case 'pause':
        if (from === 'stopped') return no('the federation is stopped: nothing to pause');
        if (from === 'paused') return ok('paused', 'already paused');
        return ok('paused', 'no new round starts until resume; agents pause their training at the next batch boundary');
      case 'resume':
        if (from === 'stopped') return no('the federation is stopped: send start');
        if (from === 'running') return ok('running', 'already running');
        return ok('running', 'rounds continue; agents resume training when their windows allow');
      case 'stop':
        if (from === 'stopped') return ok('stopped', 'already stopped');
        return ok('stopped', 'the open round (if any) is closed without aggregation; no new round starts until start');
    }
  }
}
