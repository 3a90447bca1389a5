import { deferred, type Deferred } from '../shared/util/async.js';
import type { AggregatorContext } from './aggregator-context.js';
import type { StoredModel } from './model-store.js';
import type { RoundRecord } from './round-journal.js';
import type { CloseDecision, RoundState } from './round-state.js';
import { UploadCollector } from './upload-collector.js';

/** The open round, as the inbound handlers and the round runner share it. */
export interface ActiveRound {
  readonly state: RoundState;
  /** The round's journal record, filled in as reports and updates arrive. */
  readonly record: RoundRecord;
  readonly base: StoredModel;
  /** The tensors that train and travel this round. */
  readonly federatedNames: readonly string[];
  readonly uploads: UploadCollector;
  /** Resolved once, with the decision that closes the round (or a stop). */
  readonly closing: Deferred<CloseDecision>;
  /** Close the round if its state says it can close now (call after every event and at the deadline). */
  checkClose(): void;
}

export function openActiveRound(ctx: AggregatorContext, round: Pick<ActiveRound, 'state' | 'record' | 'base' | 'federatedNames'>): ActiveRound {
  const closing = deferred<CloseDecision>();
  const checkClose = (): void => {
    if (round.state.closed) return;
    const decision = round.state.decide(ctx.clock.now());
    if (decision.close) closing.resolve(decision);
  };
  const uploads = new UploadCollector({ ctx, ...round, onVerdict: checkClose });
  return { ...round, uploads, closing, checkClose };
}
