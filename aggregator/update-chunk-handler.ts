import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { UpdateChunkMsg } from '../shared/protocol/messages.js';
import type { ActiveRound } from './active-round.js';
import type { AggregatorContext } from './aggregator-context.js';
import type { SpooledUpdate } from './update-spool.js';

/**
 * A chunk of an agent's update: counted in the round's traffic; once an update of the agent is
 * accepted, its late chunks are duplicates and a second upload is refused (acked once); otherwise the upload
 * collector takes it.
 */
export function handleUpdateChunk(ctx: AggregatorContext, active: ActiveRound, msg: UpdateChunkMsg, topic: string): void {
  active.record.bytesUp += msg.data.byteLength;
  active.record.lastChunkAt = ctx.clock.now();
  const accepted = active.state.acceptedUpdate(msg.agent) as SpooledUpdate | undefined;
  if (accepted) {
    if (accepted.upload === msg.upload) {
      ctx.counters.inc('duplicate-chunk');
      return;
    }
    active.uploads.refuseExtraUpload(
      msg.agent,
      msg.upload,
      new FedlineError(ErrorCodes.DUPLICATE_UPDATE, `agent "${msg.agent}" already delivered an update for round ${msg.round}; a second one is refused`),
      topic,
    );
    return;
  }
  active.uploads.chunk(msg, topic);
}
