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

export type Forgery = (base: NamedTensor[], ann: RoundAnnouncement) => { tensors: NamedTensor[]; sampleCount: number } | null;

/**
 * A member of the federation that behaves like an agent on the wire (status, downloads, chunked
 * uploads) but sends whatever update `forge` makes for each round: the hostile-input tests' attacker.
 */
export async function startRogueAgent(url: string, agent: string, forge: Forgery, root = 'fl/test') {
  const topics = createTopics(root);
  const transport = await MqttTransport.connect({ url, clientId: `rogue-${agent}`, logger: silentLogger() });
  const acks: AckMsg[] = [];
  const errors: unknown[] = [];
  const seen = new Set<number>();
  const status = (state: string) => encodeJson({ v: 1, agent, state, round: null, progress: null, detail: null, backend: null, samples: null, ts: Date.now() });
  await transport.publish(topics.status(agent), status('idle'), { retain: true });
  await transport.subscribe(topics.round(), (m) => {
    const ann = decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'round' }) as RoundAnnouncement;
    if (ann.state !== 'open' || ann.kind !== 'train' || seen.has(ann.round) || !ann.selected.includes(agent)) return;
    seen.add(ann.round);
    (async () => {
      const base = decodeBundle<ModelMeta>(
        await downloadModel(transport, topics, ann.base, silentLogger(), { maxModelBytes: 1 << 30, stallMs: 10_000 }),
        modelMetaSchema,
      );
      const forged = forge(bundleTensors(base), ann);
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
