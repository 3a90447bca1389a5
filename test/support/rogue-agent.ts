import { downloadModel } from '../../edge-agent/model-downlink.js';
import { sendUpdate } from '../../edge-agent/uplink.js';
import { decodeMsgpack, encodeJson } from '../../shared/protocol/wire-codec.js';
import { silentLogger } from '../../shared/util/logger.js';
import {
  modelMetaSchema,
  roundAnnouncementSchema,
  SUPPORTED_VERSIONS,
  type AckMsg,
  type ModelMeta,
  type RoundAnnouncement,
  type UpdateMeta,
} from '../../shared/protocol/messages.js';
import { MqttTransport } from '../../shared/transport/mqtt-transport.js';
import { bundleTensors, decodeBundle, encodeBundle, type NamedTensor } from '../../shared/bundle/tensor-bundle.js';
import { createTopics } from '../../shared/protocol/topics.js';

/** `previous`: the global model before `base` (the last one this rogue saw announced), with `joinAtRound` only. */
export type Forgery = (base: NamedTensor[], ann: RoundAnnouncement, previous?: NamedTensor[] | null) => { tensors: NamedTensor[]; sampleCount: number } | null;

export interface RogueOptions {
  /**
   * Stay offline (not selected) before this round: the rogue says it is idle when the round before
   * opens, downloading that round's base model, which `forge` then gets as `previous`.
   */
  joinAtRound?: number;
  /** Go offline right after the first verdict on an update (so that later rounds do not wait for it). */
  leaveAfterVerdict?: boolean;
}

/**
 * A member of the federation that behaves like an agent on the wire (status, downloads, chunked
 * uploads) but sends whatever update `forge` makes for each round: the hostile-input tests' attacker.
 */
export async function startRogueAgent(url: string, agent: string, forge: Forgery, root = 'fl/test', options: RogueOptions = {}) {
  const topics = createTopics(root);
  const transport = await MqttTransport.connect({ url, clientId: `rogue-${agent}`, logger: silentLogger() });
  const acks: AckMsg[] = [];
  const errors: unknown[] = [];
  const seen = new Set<number>();
  const status = (state: string) => encodeJson({ v: 1, agent, state, round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() });
  const joinAt = options.joinAtRound ?? 1;
  let previous: NamedTensor[] | null = null;
  const fetchBase = async (ann: RoundAnnouncement) =>
    bundleTensors(
      decodeBundle<ModelMeta>(await downloadModel(transport, topics, ann.base, silentLogger(), { maxModelBytes: 1 << 30, stallMs: 10_000 }), modelMetaSchema),
    );
  await transport.publish(topics.status(agent), status(joinAt <= 1 ? 'idle' : 'offline'), { retain: true });
  await transport.subscribe(topics.round(), (m) => {
    const ann = decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round' }) as RoundAnnouncement;
    if (ann.state === 'open' && ann.round === joinAt - 1 && !seen.has(ann.round)) {
      seen.add(ann.round);
      fetchBase(ann)
        .then(async (t) => {
          previous = t;
          await transport.publish(topics.status(agent), status('idle'), { retain: true });
        })
        .catch((err) => errors.push(err));
      return;
    }
    if (ann.state !== 'open' || ann.kind !== 'train' || seen.has(ann.round) || !ann.selected.includes(agent)) return;
    seen.add(ann.round);
    (async () => {
      const forged = forge(await fetchBase(ann), ann, previous);
      if (!forged) return;
      const meta: UpdateMeta = {
        kind: 'update',
        agent,
        round: ann.round,
        baseVersion: ann.base.version,
        sampleCount: forged.sampleCount,
        epochs: 1,
        metricsBefore: null,
        metricsAfter: null,
        trainMs: 1,
        backend: 'rogue',
      };
      const sent = await sendUpdate(transport, topics, encodeBundle(forged.tensors, meta), silentLogger(), {
        round: ann.round,
        agent,
        chunkBytes: ann.chunkBytes,
        maxInflight: 4,
        ackTimeoutMs: 5000,
      });
      acks.push(sent.ack);
      if (options.leaveAfterVerdict) await transport.publish(topics.status(agent), status('offline'), { retain: true });
    })().catch((err) => errors.push(err));
  });
  return {
    acks,
    errors,
    transport,
    /** Leave, so that the evaluation round does not wait for this "agent". */
    async leave() {
      await transport.publish(topics.status(agent), status('offline'), { retain: true });
    },
    close: () => transport.close(),
  };
}
