import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { SUPPORTED_VERSIONS, updateChunkFastPath, updateTopicMessageSchema, type UpdateTopicMessage } from '../shared/protocol/messages.js';
import { decodeMsgpack } from '../shared/protocol/wire-codec.js';
import type { InboundMessage } from '../shared/transport/transport.js';
import type { ActiveRound } from './active-round.js';
import type { AggregatorContext } from './aggregator-context.js';
import { handleEvalReport } from './eval-report-handler.js';
import { runSteps, type Step } from './inbound-steps.js';
import type { RoundJournal } from './round-journal.js';
import { handleUpdateChunk } from './update-chunk-handler.js';
import { handleUpdateDone } from './update-done-handler.js';
import { handleStatisticsReport } from './statistics-round.js';

/** Uploads whose chunks were refused before a round took them (closed, not selected), remembered so that each is told once. */
const TOLD_MAX = 4096;

/** A message on `<root>/round/<n>/update/<agent>` as the steps learn about it. */
interface UpdateMessage {
  m: InboundMessage;
  where?: { round: number; agent: string };
  msg?: UpdateTopicMessage;
  active?: ActiveRound;
}

export interface UpdateInboundDeps {
  ctx: AggregatorContext;
  /** The open round, if any. */
  current: () => ActiveRound | null;
  journal: RoundJournal;
}

/**
 * The handler of the update topics (evaluation reports, BN statistics, update chunks, update-done): decode ->
 * check topic/sender -> check membership -> check round open -> check selected -> dispatch to the
 * handler of the message type.
 */
export function createUpdateInbound(deps: UpdateInboundDeps): (m: InboundMessage) => void {
  const { ctx } = deps;
  // A straggler is told with its code, so that it stops sending instead of waiting for a verdict:
  // once per update-done, and once per upload for its chunks (not an ack for every chunk).
  const told = new Set<string>();
  /** The journal's unfinished round (outcome not yet decided) is `round`: the aggregator is starting and will resume it. */
  const resumesLater = (round: number): boolean => deps.journal.data.rounds.some((r) => r.round === round && r.outcome === null) && !deps.journal.data.complete;
  const tellSender = (u: UpdateMessage, err: unknown): void => {
    const msg = u.msg!;
    if (msg.type === 'eval' || msg.type === 'bn-stats') return;
    const { code, message } = describeError(err);
    if (msg.type === 'update-chunk') {
      const key = `${msg.round}/${msg.agent}/${msg.upload}/${code}`;
      if (told.has(key)) return;
      if (told.size >= TOLD_MAX) told.clear();
      told.add(key);
    }
    ctx.sendAck(msg.round, msg.agent, {
      status: 'rejected',
      upload: msg.upload,
      sha256: msg.type === 'update-done' ? msg.sha256 : null,
      // The answer to that update-done: echo its number (undefined is left out of the message).
      query: msg.type === 'update-done' ? msg.query : undefined,
      code,
      reason: message,
    });
  };
  const steps: readonly Step<UpdateMessage>[] = [
    {
      name: 'parse-topic',
      run: (u) => {
        u.where = ctx.topics.parseUpdate(u.m.topic) ?? undefined;
        if (!u.where) throw new FedlineError(ErrorCodes.MSG_TOPIC, `unexpected topic ${u.m.topic}`);
      },
    },
    {
      name: 'decode',
      run: (u) => {
        const what = { topic: u.m.topic, what: 'update message' };
        u.msg = decodeMsgpack<UpdateTopicMessage>(u.m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, what, updateChunkFastPath);
      },
    },
    {
      name: 'check-sender',
      run: ({ m, msg, where }) => {
        if (msg!.round !== where!.round || msg!.agent !== where!.agent) {
          throw new FedlineError(ErrorCodes.MSG_TOPIC, `message says round ${msg!.round} from "${msg!.agent}" but came on ${m.topic}`);
        }
      },
    },
    {
      name: 'check-membership',
      run: ({ where }) => {
        if (!ctx.config.agents.includes(where!.agent)) {
          throw new FedlineError(ErrorCodes.UNKNOWN_AGENT, `agent "${where!.agent}" is not a member of federation ${ctx.config.federation}`);
        }
      },
    },
    {
      name: 'check-round-open',
      run: (u) => {
        const active = deps.current();
        const round = u.msg!.round;
        if (!active && resumesLater(round)) {
          // A restarted aggregator hears the update topics before it has reopened the round its
          // journal left unfinished: a "round closed" now would end uploads that round still
          // waits for. Say nothing; the agent asks again, and chunks sent meanwhile are listed missing.
          ctx.log.debug({ round, agent: u.msg!.agent, type: u.msg!.type }, 'message for the round being resumed; not answered yet');
          return 'done';
        }
        if (!active || active.state.plan.round !== round || active.state.closed) {
          throw new FedlineError(ErrorCodes.ROUND_CLOSED, `round ${round} is not open${active ? ` (round ${active.state.plan.round} is)` : ''}`);
        }
        u.active = active;
      },
      onReject: tellSender,
    },
    {
      name: 'check-selected',
      run: ({ msg, active }) => {
        if (!active!.state.isSelected(msg!.agent))
          throw new FedlineError(ErrorCodes.NOT_SELECTED, `agent "${msg!.agent}" was not selected for round ${msg!.round}`);
      },
      onReject: tellSender,
    },
    {
      name: 'dispatch',
      run: ({ m, msg, active }) => {
        if (msg!.type === 'eval') handleEvalReport(ctx, active!, msg!);
        else if (msg!.type === 'bn-stats') handleStatisticsReport(ctx, active!, msg!);
        else if (msg!.type === 'update-chunk') handleUpdateChunk(ctx, active!, msg!, m.topic);
        else handleUpdateDone(ctx, active!, msg!);
      },
    },
  ];
  return (m) => runSteps(steps, { m }, (u, err) => ctx.reject(err, m.topic, u.where?.agent ?? null));
}
