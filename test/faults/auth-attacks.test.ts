import { test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt, { type MqttClient } from 'mqtt';
import { startBroker } from '../../broker/main.js';
import { parseConfig } from '../../shared/config/config-file.js';
import { brokerConfigSchema } from '../../shared/config/broker-config.js';
import { encodeJson } from '../../shared/protocol/wire-codec.js';
import { createTopics } from '../../shared/protocol/topics.js';
import { captureLogger, mosquittoAvailable, startFederation, startMosquitto, tempDir, testAccess, writeAuthFiles, type AuthFiles } from '../helpers.js';

const root = createTopics('fl/test');
type Login = { username: string; password: string };

function connect(url: string, login: Partial<Login>, clientId: string): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { protocolVersion: 4, clean: true, reconnectPeriod: 0, connectTimeout: 5000, clientId, ...login });
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      reject(err);
    });
  });
}

/**
 * Attacks by clients on the plant network that have (or guess) a login, with the broker rules in
 * place: taking over another agent's session by its client id, logging in as another user,
 * reading another agent's acks, and sending MES commands without the MES role. A federation runs
 * meanwhile; it must finish as if nothing happened.
 */
async function attackScenario(url: string, auth: AuthFiles): Promise<void> {
  const dir = tempDir('auth-attack-fed');
  const fed = await startFederation({ url, dir: dir.path, agents: ['site-a', 'site-b'], rounds: 1, auth: auth.credentials });
  const opened: MqttClient[] = [];
  try {
    // The real site-a is connected (client id fedline-agent-site-a); watch for it being kicked off.
    let siteAKicked = 0;
    fed.agents[0]!.transport.on('offline', () => siteAKicked++);

    // 1. Session takeover: site-c, a valid user of the federation, presents site-a's client id
    //    (first the one fedline uses, then the user name itself).
    const first = await connect(url, auth.credentials('site-c'), 'fedline-agent-site-a');
    opened.push(first);
    first.end(true);
    const c = await connect(url, auth.credentials('site-c'), 'site-a');
    opened.push(c);

    // 2. Logging in as site-a without its password.
    await assert.rejects(connect(url, { username: 'site-a', password: 'guess' }, 'fedline-agent-site-a'), /Not authori[sz]ed|Bad user ?name or password/i);

    // 3. Reading site-a's acks as site-c: refused (SUBACK 0x80 from Aedes) or granted-but-empty (Mosquitto).
    const seen: string[] = [];
    c.on('message', (topic) => seen.push(topic));
    await c.subscribeAsync(root.acksFor('site-a'), { qos: 1 }).catch(() => undefined);

    // 4. MES commands without the MES role: stop the federation as an agent. (Aedes closes the
    //    connection of a client that publishes outside its rights; Mosquitto drops the message.)
    await Promise.race([
      c.publishAsync(root.command('stop'), encodeJson({ v: 1, requestId: 'evil-1', reason: 'attack' }), { qos: 1 }).catch(() => undefined),
      new Promise((r) => setTimeout(r, 2000)),
    ]);

    const result = await fed.aggregator.aggregator.run();
    assert.equal(result.rounds[0]!.outcome, 'aggregate', 'the federation was neither stopped nor paused');
    assert.deepEqual(result.rounds[0]!.participants, ['site-a', 'site-b'], "site-a's session survived the takeover attempts");
    assert.equal(siteAKicked, 0, 'the real site-a was never disconnected');
    assert.deepEqual(
      seen.filter((t) => t.endsWith('/ack/site-a')),
      [],
      "site-b read none of site-a's acks",
    );
  } finally {
    for (const c of opened) c.end(true);
    await fed.stop();
    dir.cleanup();
  }
}

test(
  'auth attacks on the embedded Aedes broker: client-id takeover, wrong password, reading acks, commands without the MES role; refusals logged',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('auth-aedes');
    const auth = writeAuthFiles(dir.path, testAccess());
    const { logger, lines } = captureLogger();
    const broker = await startBroker(
      parseConfig(brokerConfigSchema, { host: '127.0.0.1', port: 0, auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile } }, 'test broker'),
      logger,
    );
    try {
      await attackScenario(broker.url, auth);
      const refusals = lines.filter((l) => l.code === 'FL_AUTH');
      assert.ok(
        refusals.some((l) => l.username === 'site-a' && /wrong user name or password/.test(String(l.msg))),
        'the wrong password was logged',
      );
      assert.ok(
        refusals.some((l) => l.username === 'site-c' && l.topic === root.acksFor('site-a')),
        'the subscription to site-a acks was logged',
      );
      assert.ok(
        refusals.some((l) => l.username === 'site-c' && l.topic === root.command('stop')),
        'the command without the MES role was logged',
      );
      // The takeover attempts got sessions of their own user, not site-a's.
      assert.ok(lines.some((l) => l.requestedClientId === 'fedline-agent-site-a' && l.client === 'site-c'));
      assert.ok(lines.some((l) => l.requestedClientId === 'site-a' && l.client === 'site-c'));
    } finally {
      await broker.close();
      dir.cleanup();
    }
  },
);

const bin = mosquittoAvailable();
test(
  'auth attacks on Mosquitto with the repository mosquitto.conf: the same attacks fail',
  { skip: bin ? false : 'mosquitto is not installed', timeout: 120_000 },
  async () => {
    const dir = tempDir('auth-mosquitto');
    const mosq = await startMosquitto(bin!, dir.path);
    let log = '';
    mosq.proc.stderr?.on('data', (d: Buffer) => (log += d.toString()));
    try {
      await attackScenario(mosq.url, mosq.auth);
      // Mosquitto logs refused logins itself; refused publishes and subscriptions only at its debug level.
      assert.match(log, /not authori[sz]ed/i);
    } finally {
      await mosq.stop();
      dir.cleanup();
    }
  },
);
