import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { EvalReportMsg } from '../shared/protocol/messages.js';
import type { ActiveRound } from './active-round.js';
import type { AggregatorContext } from './aggregator-context.js';

/**
 * An agent's evaluation of the round's base model on its local test split: recorded in the round
 * (the target rule and evaluation rounds decide on it) and in the round's spool (a restarted
 * aggregator takes it back). The journal and the version's meta.json get every site's metrics once,
 * when the round closes.
 */
export function handleEvalReport(ctx: AggregatorContext, active: ActiveRound, msg: EvalReportMsg): void {
  if (msg.baseVersion !== active.base.version) {
    throw new FedlineError(
      ErrorCodes.WRONG_BASE,
      `evaluation of version ${msg.baseVersion}, but round ${msg.round} is based on version ${active.base.version}`,
    );
  }
  if (msg.metrics.confusion.length !== active.base.classes.length) {
    throw new FedlineError(
      ErrorCodes.MSG_SCHEMA,
      `evaluation has a ${msg.metrics.confusion.length}-class confusion matrix; the federation has ${active.base.classes.length} classes`,
    );
  }
  if (!active.state.recordEval(msg.agent, msg.metrics)) return;
  active.record.baseMetrics[msg.agent] = msg.metrics;
  active.record.bytesDown += msg.downloadedBytes;
  ctx.log.info({ round: msg.round, agent: msg.agent, version: msg.baseVersion, accuracy: msg.metrics.accuracy }, 'global model evaluated by agent');
  ctx.spool
    .saveEval(msg.round, msg.agent, { metrics: msg.metrics, downloadedBytes: msg.downloadedBytes })
    .catch((err: Error) => ctx.log.warn({ err: err.message, agent: msg.agent }, 'could not keep the evaluation on disk'));
  active.checkClose();
}
