import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { DashboardConfig } from './dashboard-config.js';
import { connectMqtt } from '../shared/transport/mqtt-connect.js';
import type { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { eventSchemas, type MesEventType } from '../shared/protocol/mes.js';
import { agentStatusSchema, modelManifestSchema, PROTOCOL_VERSION } from '../shared/protocol/messages.js';
import { createTopics, defaultRoot, type Topics } from '../shared/protocol/topics.js';
import { decodeJson, encodeJson } from '../shared/protocol/wire-codec.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { Counters } from '../shared/util/counters.js';
import type { Logger } from '../shared/util/logger.js';
import { FederationView } from './federation-view.js';
import { startDashboardHttp, type DashboardHttp } from './http-server.js';
import { OperatorPasswords } from './operator-passwords.js';

export interface RunningDashboard {
  /** The page's address, e.g. http://127.0.0.1:8080/ */
  url: string;
  view: FederationView;
  counters: Counters;
  transport: MqttTransport;
  close(): Promise<void>;
}

/** Events of the release management (another part of the aggregator): only `version` (and the envelope) is read. */
const releaseEventSchema = z.looseObject({
  v: z.literal(PROTOCOL_VERSION),
  type: z.string(),
  ts: z.number().int().nonnegative(),
  version: z.number().int().nonnegative(),
});

/**
 * `fedline dashboard`: follows one federation through the broker with the dashboard's own login
 * (role `dashboard`: reads events, agents' status and the model manifest; sends commands only
 * with `"operator": true`) and serves the page that shows it (dashboard/http-server.ts).
 */
export async function startDashboard(config: Readonly<DashboardConfig>, logger: Logger): Promise<RunningDashboard> {
  const log = logger.child({ module: 'dashboard' });
  const topics = createTopics(config.topicRoot ?? defaultRoot(config.federation));
  const operators = config.operators ? OperatorPasswords.load(config.operators.passwordFile) : null;
  const view = new FederationView(config.federation, config.defectClass);
  const counters = new Counters();
  const clientId = `fedline-dashboard-${randomBytes(4).toString('hex')}`;
  const transport = await connectMqtt(config.mqtt, clientId, logger);
  let http: DashboardHttp | null = null;
  try {
    http = await startDashboardHttp({
      host: config.http.host,
      port: config.http.port,
      snapshot: () => view.snapshot(),
      operators,
      sessionIdleMs: config.sessionIdleMinutes * 60_000,
      sendCommand: (verb, body, user) => sendCommand(transport, topics, verb, body, user),
      log,
      counters,
    });
    const changed = http.changed.bind(http);
    await follow(transport, topics, view, { log, counters, changed });
  } catch (err) {
    await http?.close().catch(() => undefined);
    await transport.close().catch(() => undefined);
    throw err;
  }
  log.info({ url: http.url, federation: config.federation, operators: operators !== null }, `dashboard on ${http.url}`);
  const server = http;
  return {
    url: server.url,
    view,
    counters,
    transport,
    async close() {
      await server.close();
      await transport.close();
    },
  };
}

/** How long the broker may take to acknowledge a command before the operator is told. */
const COMMAND_ACK_TIMEOUT_MS = 10_000;

async function sendCommand(transport: MqttTransport, topics: Topics, verb: string, body: Record<string, unknown>, user: string): Promise<string> {
  const requestId = `dashboard-${randomBytes(6).toString('hex')}`;
  const published = transport.publish(topics.command(verb), encodeJson({ v: PROTOCOL_VERSION, requestId, by: `${user}@dashboard`, ...body }), { qos: 1 });
  let timer: NodeJS.Timeout | undefined;
  // A broker that refuses the publish (the dashboard's user lacks "operator": true) drops the
  // connection instead of answering: the operator gets an error, not a request that hangs.
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new FedlineError(
            ErrorCodes.AUTH,
            `the broker did not take the ${verb} command within ${COMMAND_ACK_TIMEOUT_MS / 1000} s: is the dashboard's MQTT user an operator ("operator": true in the access file)?`,
          ),
        ),
      COMMAND_ACK_TIMEOUT_MS,
    );
  });
  published.catch(() => undefined); // settled later, after the timeout: not an unhandled rejection
  try {
    await Promise.race([published, timeout]);
  } finally {
    clearTimeout(timer);
  }
  return requestId;
}

interface FollowContext {
  log: Logger;
  counters: Counters;
  changed(): void;
}

/** Subscribe to what the view is made of; a malformed message is logged, counted and dropped. */
async function follow(transport: MqttTransport, topics: Topics, view: FederationView, ctx: FollowContext): Promise<void> {
  const guarded = (what: string, apply: (topic: string, payload: Buffer) => void) => (m: { topic: string; payload: Buffer }) => {
    if (m.payload.length === 0) return; // a cleared retained message
    try {
      apply(m.topic, m.payload);
      ctx.changed();
    } catch (err) {
      const code = err instanceof FedlineError ? err.code : 'FL_INTERNAL';
      ctx.counters.inc(code);
      ctx.log.warn({ code, topic: m.topic, err: (err as Error).message }, `${what} dropped`);
    }
  };
  await transport.subscribe(
    topics.statusAll(),
    guarded('agent status', (topic, payload) => {
      const s = decodeJson(payload, agentStatusSchema, [PROTOCOL_VERSION], { topic, what: 'agent status' });
      if (topics.parseStatus(topic)?.agent !== s.agent) throw new FedlineError(ErrorCodes.MSG_SCHEMA, `status on ${topic} names agent "${s.agent}"`);
      view.onStatus(s, Date.now());
    }),
  );
  await transport.subscribe(
    topics.modelLatest(),
    guarded('model manifest', (topic, payload) =>
      view.onManifest(decodeJson(payload, modelManifestSchema, [PROTOCOL_VERSION], { topic, what: 'model manifest' }), Date.now()),
    ),
  );
  await transport.subscribe(
    topics.eventsAll(),
    guarded('event', (topic, payload) => {
      const type = topic.slice(topics.root.length + '/events/'.length).split('/')[0]!;
      const schema = type in eventSchemas ? eventSchemas[type as MesEventType] : type.startsWith('model-') ? releaseEventSchema : null;
      if (!schema) return; // an event this dashboard does not show
      const e = decodeJson(payload, schema as z.ZodType<{ type: string; ts: number }>, [PROTOCOL_VERSION], { topic, what: `${type} event` });
      view.onEvent(e as { type: string; ts: number } & Record<string, unknown>, Date.now());
    }),
  );
}
