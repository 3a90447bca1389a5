import assert from 'node:assert/strict';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { waitFor } from './helpers.js';

/**
 * The broker access rules, proved against a running broker (embedded Aedes or Mosquitto) with
 * real MQTT clients: what each role may publish and read, and that everything else is refused.
 * "Refused" is judged by what another client sees, not by how the broker says no (Aedes closes
 * the connection of a client publishing outside its rights, Mosquitto acknowledges and drops;
 * a refused subscription gets 0x80 from Aedes, nothing delivered from Mosquitto).
 */

export type Login = { username: string; password: string };
export type Connect = (login: Partial<Login> | null, extra?: IClientOptions) => Promise<MqttClient>;

const R = 'fl/test';

/** A client with no automatic reconnect (a refused publish may close it; the next step uses a fresh one). */
export function connector(url: string, base: IClientOptions = {}): Connect {
  return (login, extra = {}) =>
    new Promise<MqttClient>((resolve, reject) => {
      const c = mqtt.connect(url, {
        protocolVersion: 4,
        clean: true,
        reconnectPeriod: 0,
        connectTimeout: 5000,
        clientId: `sec-${Math.random().toString(36).slice(2, 10)}`,
        ...base,
        ...(login ?? {}),
        ...extra,
      });
      c.once('connect', () => resolve(c));
      c.once('error', (err) => {
        c.end(true);
        reject(err);
      });
      c.once('close', () => reject(new Error('connection closed before CONNACK')));
    });
}

export async function refusedLogin(connect: Connect, login: Partial<Login> | null, extra?: IClientOptions): Promise<string> {
  try {
    const c = await connect(login, extra);
    await c.endAsync();
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail(`the broker accepted ${JSON.stringify(login)}`);
}

export async function securityScenario(connect: Connect, login: (user: string) => Login): Promise<void> {
  const clients: MqttClient[] = [];
  const open = async (user: string) => {
    const c = await connect(login(user));
    clients.push(c);
    return c;
  };
  const seen: { topic: string; payload: string }[] = [];
  const auditor = await open('auditor');
  auditor.on('message', (topic, payload) => seen.push({ topic, payload: payload.toString() }));
  await auditor.subscribeAsync(`${R}/#`, { qos: 1 });
  let marks = 0;
  /** Everything published before now has reached the auditor (a marker from a permitted publisher came through after it). */
  const settle = async () => {
    const id = `mark-${++marks}`;
    const agg = await open('aggregator');
    await agg.publishAsync(`${R}/events/marker`, id, { qos: 1 });
    await waitFor('the marker', () => seen.some((s) => s.payload === id), 5000);
    await new Promise((r) => setTimeout(r, 150));
  };
  const got = (topic: string, payload: string) => seen.some((s) => s.topic === topic && s.payload === payload);

  const allowed = async (user: string, topic: string, retain = false) => {
    const c = await open(user);
    const payload = `${user}:${topic}:${Math.random()}`;
    await c.publishAsync(topic, payload, { qos: 1, retain });
    await waitFor(`${user} publishing ${topic} to come through`, () => got(topic, payload), 5000);
  };
  const refused = async (user: string, topic: string, retain = false) => {
    const payload = `forged by ${user}`;
    const c = await connect(login(user));
    // Aedes drops the connection instead of acknowledging; do not wait for a PUBACK that never comes.
    c.publish(topic, payload, { qos: 1, retain });
    await new Promise((r) => setTimeout(r, 150));
    c.end(true);
    await settle();
    assert.ok(!got(topic, payload), `${user} must not publish on ${topic}`);
  };
  /** Can `user` receive what a permitted publisher sends on `topic` through the subscription `filter`? */
  const canRead = async (user: string, filter: string, topic: string, publisher: string): Promise<boolean> => {
    const c = await open(user);
    const mine: string[] = [];
    c.on('message', (_t, p) => mine.push(p.toString()));
    // A refused subscription: SUBACK 0x80 (MQTT.js rejects) from Aedes; a granted one that delivers nothing from Mosquitto.
    const granted = await c.subscribeAsync(filter, { qos: 1 }).catch((err: Error) => {
      if (/Subscribe error/.test(err.message)) return [{ topic: filter, qos: 128 }];
      throw err;
    });
    const payload = `for ${user} via ${filter}: ${Math.random()}`;
    const pub = await open(publisher);
    await pub.publishAsync(topic, payload, { qos: 1 });
    await waitFor('the auditor to see it', () => got(topic, payload), 5000);
    if (granted[0]!.qos === 128) return false;
    await new Promise((r) => setTimeout(r, 200));
    return mine.includes(payload);
  };

  try {
    // The aggregator publishes rounds, models, acks and events.
    await allowed('aggregator', `${R}/round`, true);
    await allowed('aggregator', `${R}/model/latest`, true);
    await allowed('aggregator', `${R}/model/3/0`, true);
    await allowed('aggregator', `${R}/round/3/ack/site-a`);
    await allowed('aggregator', `${R}/events/round-started`);
    // An agent: its own update, status and events, nothing else.
    await allowed('site-a', `${R}/round/3/update/site-a`);
    await allowed('site-a', `${R}/agent/site-a/status`, true);
    await allowed('site-a', `${R}/events/agent-state/site-a`);
    await refused('site-a', `${R}/round/3/update/site-b`);
    await refused('site-a', `${R}/agent/site-b/status`, true);
    await refused('site-a', `${R}/events/alert/site-b`);
    await refused('site-a', `${R}/events/round-completed`);
    await refused('site-a', `${R}/model/latest`, true);
    await refused('site-a', `${R}/model/3/0`, true);
    await refused('site-a', `${R}/model/99/0`, true);
    await refused('site-a', `${R}/round`, true);
    await refused('site-a', `${R}/round/3/ack/site-a`);
    await refused('site-a', `${R}/cmd/stop`);
    // The fake global model did not replace the retained one.
    const late = await open('site-b');
    const retained: string[] = [];
    late.on('message', (t, p) => retained.push(`${t} ${p.toString()}`));
    await late.subscribeAsync(`${R}/model/latest`, { qos: 1 });
    await waitFor('the retained manifest', () => retained.length > 0, 5000);
    assert.ok(
      retained.every((r) => r.includes('aggregator:')),
      `retained manifest comes from the aggregator: ${retained.join(', ')}`,
    );
    // What an agent may read: rounds, models, its own acks and the MES commands for training; not other agents' traffic.
    assert.equal(await canRead('site-a', `${R}/round`, `${R}/round`, 'aggregator'), true);
    assert.equal(await canRead('site-a', `${R}/model/+/+`, `${R}/model/4/1`, 'aggregator'), true);
    assert.equal(await canRead('site-a', `${R}/round/+/ack/site-a`, `${R}/round/4/ack/site-a`, 'aggregator'), true);
    assert.equal(await canRead('site-a', `${R}/cmd/pause`, `${R}/cmd/pause`, 'mes'), true);
    assert.equal(await canRead('site-a', `${R}/round/+/ack/site-b`, `${R}/round/4/ack/site-b`, 'aggregator'), false, "another agent's acks");
    assert.equal(await canRead('site-a', `${R}/round/+/ack/+`, `${R}/round/4/ack/site-b`, 'aggregator'), false, 'all acks');
    assert.equal(await canRead('site-a', `${R}/round/+/update/+`, `${R}/round/4/update/site-b`, 'site-b'), false, "other agents' updates");
    assert.equal(await canRead('site-a', `${R}/#`, `${R}/round/4/update/site-b`, 'site-b'), false, 'everything');
    // The MES: reads events and status, sends commands; does not touch rounds, models or updates.
    assert.equal(await canRead('mes', `${R}/events/#`, `${R}/events/round-completed`, 'aggregator'), true);
    assert.equal(await canRead('mes', `${R}/agent/+/status`, `${R}/agent/site-b/status`, 'site-b'), true);
    await allowed('mes', `${R}/cmd/pause`);
    await allowed('mes', `${R}/cmd/model-manifest`);
    await refused('mes', `${R}/round`, true);
    await refused('mes', `${R}/model/latest`, true);
    await refused('mes', `${R}/agent/site-a/status`, true);
    assert.equal(await canRead('mes', `${R}/round/+/update/+`, `${R}/round/5/update/site-a`, 'site-a'), false, 'updates are not for the MES');
    // The inspection service and its camera.
    assert.equal(await canRead('site-a-inspect', `${R}/model/latest`, `${R}/model/latest`, 'aggregator'), true);
    assert.equal(await canRead('site-a-inspect', `${R}/inspection/site-a/images/#`, `${R}/inspection/site-a/images/cam1`, 'camera-a'), true);
    await allowed('site-a-inspect', `${R}/inspection/site-a/verdict`);
    await refused('site-a-inspect', `${R}/inspection/site-b/verdict`);
    await refused('camera-a', `${R}/round/1/update/site-a`);
  } finally {
    for (const c of clients) c.end(true);
  }
}
