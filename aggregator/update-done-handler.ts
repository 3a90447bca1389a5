import { ErrorCodes } from '../shared/protocol/errors.js';
import type { UpdateDoneMsg } from '../shared/protocol/messages.js';
import type { ActiveRound } from './active-round.js';
import type { AggregatorContext } from './aggregator-context.js';
import type { SpooledUpdate } from './update-spool.js';

/**
 * An agent says its upload is complete and names its SHA-256: an update already accepted gets its
 * verdict again (a lost ack); otherwise the upload collector finishes it or lists what is missing.
 * Every ack sent here answers the update-done, so it echoes its `query` (absent when it had none).
 */
export function handleUpdateDone(ctx: AggregatorContext, active: ActiveRound, msg: UpdateDoneMsg): void {
  const { agent, round, upload, sha256, query } = msg;
  const accepted = active.state.acceptedUpdate(agent) as SpooledUpdate | undefined;
  if (accepted) {
    if (accepted.upload === upload) ctx.sendAck(round, agent, { status: 'accepted', upload, sha256, query });
    else
      ctx.sendAck(round, agent, {
        status: 'rejected',
        upload,
        sha256,
        query,
        code: ErrorCodes.DUPLICATE_UPDATE,
        reason: 'another update of this agent was already accepted for this round',
      });
    return;
  }
  active.uploads.done(msg);
}
