import { decodeMsgpack } from '../shared/protocol/wire-codec.js';
import { silentLogger } from '../shared/util/logger.js';
import { eventSchemas, type MesEventType } from '../shared/protocol/mes.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema, type AgentStatus } from '../shared/protocol/messages.js';
import { MqttTransport, type MqttTransportOptions } from '../shared/transport/mqtt-transport.js';
import { createTopics } from '../shared/protocol/topics.js';

const topics = createTopics('fl/test');

/** What an MES sees: every status, every event (validated against the documented schemas), every update-topic message. */
export async function mesObserver(url: string, credentials: Pick<MqttTransportOptions, 'username' | 'password'> = {}) {
  const t = await MqttTransport.connect({ url, clientId: `mes-${Math.random().toString(36).slice(2, 8)}`, logger: silentLogger(), ...credentials });
  const statuses: AgentStatus[] = [];
  const events: { topic: string; event: Record<string, unknown> & { type: string } }[] = [];
  const updates: { agent: string; type: string; at: number }[] = [];
  const invalid: string[] = [];
  const badUpdates: string[] = [];
  await t.subscribe(topics.statusAll(), (m) => {
    if (m.payload.byteLength) statuses.push(JSON.parse(m.payload.toString()) as AgentStatus);
  });
  await t.subscribe(topics.eventsAll(), (m) => {
    const event = JSON.parse(m.payload.toString()) as Record<string, unknown> & { type: string };
    const schema = eventSchemas[event.type as MesEventType];
    const r = schema?.safeParse(event);
    if (!r?.success) invalid.push(`${m.topic}: ${JSON.stringify(event)}: ${r ? r.error.message : 'unknown type'}`);
    events.push({ topic: m.topic, event });
  });
  await t.subscribe(topics.updatesAll(), (m) => {
    // Tests send hostile updates on purpose: the observer notes them and keeps listening.
    try {
      const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'update' });
      updates.push({ agent: msg.agent, type: msg.type, at: Date.now() });
    } catch (err) {
      badUpdates.push(`${m.topic}: ${(err as Error).message}`);
    }
  });
  const of = (agent: string) => statuses.filter((s) => s.agent === agent);
  const ofType = (type: string) => events.filter((e) => e.event.type === type).map((e) => e.event);
  return { transport: t, statuses, events, updates, badUpdates, invalid, of, ofType, last: (agent: string) => of(agent).at(-1), close: () => t.close() };
}
