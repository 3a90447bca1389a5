import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { accessFileSchema, type AccessFile } from '../../broker/access.js';
import { startBroker } from '../../broker/main.js';
import { startMosquitto, testPassword, writeAuthFiles, type RunningMosquitto } from '../../demo/mosquitto.js';
import { parseConfig } from '../../shared/config/config-file.js';
import { brokerConfigSchema } from '../../shared/config/broker-config.js';
import { silentLogger } from '../../shared/util/logger.js';
import { REPO_ROOT, waitFor } from '../helpers.js';
import { TcpProxy } from './tcp-proxy.js';

/**
 * Headquarters and one plant, two real Mosquitto processes started from the shipped
 * examples/mosquitto-bridge/ files (hq.conf, plant.conf and their ACLs), changed only where a test
 * must: loopback ports, temp folders, test passwords. The plant's bridge reaches HQ through a
 * loopback TCP proxy that counts the bytes each way: what crosses the plant's link. Headquarters
 * may also be the embedded broker (`fedline broker`, with hq-access.json): Mosquitto's bridge is
 * the plant's, the HQ end is any broker that takes a bridge.
 */

export const EXAMPLE_DIR = join(REPO_ROOT, 'examples', 'mosquitto-bridge');
/** The federation's (HQ) topic root and the plant's own root, as in the example files. */
export const HQ_ROOT = 'fl/usb-inspection';
export const PLANT_ROOT = 'fl/plant-a';
/** The plant's agent id at HQ: the bridge's user there and the plant service's upstream user here. */
export const PLANT_AGENT = 'plant-a';
/** Where the plant broker publishes the bridge's state ("1" up, "0" down), retained (notifications in plant.conf). */
export const BRIDGE_STATE_TOPIC = `$SYS/broker/connection/${PLANT_AGENT}/state`;

export const loadAccess = (file: string): AccessFile => accessFileSchema.parse(JSON.parse(readFileSync(join(EXAMPLE_DIR, file), 'utf8')));
export const credentials = (user: string) => ({ username: user, password: testPassword(user) });

/** Headquarters' broker: Mosquitto from hq.conf, or the embedded broker (`fedline broker`) with hq-access.json. */
export type HqKind = 'mosquitto' | 'embedded';

interface HqBroker {
  url: string;
  port: number;
  stop(): Promise<void>;
}

export interface BridgedBrokers {
  hq: HqBroker;
  plant: RunningMosquitto;
  /** Between the plant's bridge and HQ: bytesFromClients went into HQ, bytesToClients came down to the plant. */
  link: TcpProxy;
  /** The bridge's state as the plant broker last published it ("1" / "0"), with every change in order. */
  bridgeStates: string[];
  /** An MQTT client logged in as `user` (ended by stop()). */
  connect(broker: 'hq' | 'plant', user: string, options?: IClientOptions): Promise<MqttClient>;
  /** Wait until the plant broker reports the bridge `up` ("1") or down ("0"). */
  waitBridge(up: boolean, timeoutMs?: number): Promise<void>;
  /** Stop HQ's Mosquitto (SIGTERM: it saves its persistence file) and wait until the plant sees the bridge down. */
  stopHq(): Promise<void>;
  /** Start HQ again on the same port and folder (its persistence), and wait until the bridge is up again. */
  startHq(): Promise<void>;
  stop(): Promise<void>;
}

async function startHqBroker(kind: HqKind, bin: string, dir: string, port?: number): Promise<HqBroker> {
  if (kind === 'embedded') {
    const auth = writeAuthFiles(dir, loadAccess('hq-access.json'));
    const broker = await startBroker(
      parseConfig(
        brokerConfigSchema,
        { host: '127.0.0.1', port: port ?? 0, auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile } },
        'HQ broker',
      ),
      silentLogger(),
    );
    return { url: broker.url, port: broker.port, stop: () => broker.close() };
  }
  return startMosquitto(bin, dir, {
    confFile: join(EXAMPLE_DIR, 'hq.conf'),
    access: loadAccess('hq-access.json'),
    aclFile: join(EXAMPLE_DIR, 'hq.acl'),
    ...(port !== undefined ? { port } : {}),
  });
}

/** The plant's bridge goes to the link proxy instead of hq.example.com, with the test password of its HQ user. */
function bridgeRewrite(linkPort: number): (line: string) => string {
  return (line) => {
    if (/^\s*address\s/.test(line)) return `address 127.0.0.1:${linkPort}`;
    if (/^\s*remote_password\s/.test(line)) return `remote_password ${testPassword(PLANT_AGENT)}`;
    return line;
  };
}

export async function startBridgedBrokers(bin: string, dir: string, hqKind: HqKind = 'mosquitto'): Promise<BridgedBrokers> {
  const hqDir = join(dir, 'hq');
  const plantDir = join(dir, 'plant');
  mkdirSync(hqDir);
  mkdirSync(plantDir);
  const clients: MqttClient[] = [];
  let hq = await startHqBroker(hqKind, bin, hqDir);
  const link = await TcpProxy.start(hq.port);
  const plant = await startMosquitto(bin, plantDir, {
    confFile: join(EXAMPLE_DIR, 'plant.conf'),
    access: loadAccess('plant-access.json'),
    // The plant service's upstream user is in plant-upstream-access.json; plant.acl holds both files' rules.
    extraUsers: loadAccess('plant-upstream-access.json').users.map((u) => u.username),
    aclFile: join(EXAMPLE_DIR, 'plant.acl'),
    rewrite: bridgeRewrite(link.port),
  });
  const bridgeStates: string[] = [];
  const connect = async (broker: 'hq' | 'plant', user: string, options: IClientOptions = {}): Promise<MqttClient> => {
    const url = broker === 'hq' ? hq.url : plant.url;
    const client = await mqtt.connectAsync(url, {
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      clientId: user,
      ...credentials(user),
      ...options,
    });
    clients.push(client);
    return client;
  };
  const stop = async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
    await plant.stop();
    await link.close();
    await hq.stop();
  };
  // restart_timeout 2 30 in plant.conf: the first retry comes 2-6 s after the link was lost.
  const waitBridge = (up: boolean, timeoutMs = 60_000) =>
    waitFor(up ? 'the plant bridge to connect to HQ' : 'the plant to see the bridge down', () => bridgeStates.at(-1) === (up ? '1' : '0'), timeoutMs);
  try {
    // The plant's MES may read the bridge's state (plant-access.json): the event to wait on.
    const mes = await connect('plant', 'mes');
    mes.on('message', (_topic, payload) => bridgeStates.push(payload.toString('utf8')));
    await mes.subscribeAsync(BRIDGE_STATE_TOPIC, { qos: 1 });
    await waitBridge(true, 30_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    get hq() {
      return hq;
    },
    plant,
    link,
    bridgeStates,
    connect,
    waitBridge,
    async stopHq() {
      await hq.stop();
      await waitBridge(false);
    },
    async startHq() {
      hq = await startHqBroker(hqKind, bin, hqDir, hq.port);
      await waitBridge(true);
    },
    stop,
  };
}

/** Messages a client receives, in order, with their retain flag. */
export interface Received {
  topic: string;
  payload: Buffer;
  retain: boolean;
}

export async function subscribeAll(client: MqttClient, filters: string[]): Promise<Received[]> {
  const got: Received[] = [];
  client.on('message', (topic, payload, packet) => got.push({ topic, payload, retain: packet.retain }));
  const granted = await client.subscribeAsync(filters, { qos: 1 });
  const refused = granted.filter((g) => g.qos === 128);
  if (refused.length > 0) throw new Error(`subscriptions refused: ${refused.map((g) => g.topic).join(', ')}`);
  return got;
}
