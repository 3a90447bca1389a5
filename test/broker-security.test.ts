import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AccessPolicy, accessFileSchema, filterCovers, mayPublish, maySubscribe, renderMosquittoAcl, rightsFor } from '../broker/access.js';
import { startBroker } from '../broker/main.js';
import { hashPassword, PasswordFile, setPasswordLine, verifyPassword } from '../broker/passwords.js';
import { loadConfigFile, parseConfig } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { silentLogger } from '../shared/util/logger.js';
import { connector, refusedLogin, securityScenario } from './broker-security-scenario.js';
import { makeTestPki, opensslAvailable } from './certs.js';
import { mosquittoAvailable, REPO_ROOT, startMosquitto, tempDir, testAccess, testPassword, writeAuthFiles } from './helpers.js';

const mosquitto = mosquittoAvailable();
const noMosquitto = mosquitto ? false : 'mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)';

test('password hashes: fedline writes what mosquitto_passwd writes, and reads both of its formats', () => {
  const h = hashPassword('correct horse', 1000);
  assert.match(h, /^\$7\$1000\$[A-Za-z0-9+/=]{16}\$[A-Za-z0-9+/=]{88}$/);
  assert.ok(verifyPassword('correct horse', h));
  assert.ok(!verifyPassword('correct hors', h));
  assert.ok(!verifyPassword('x', 'plaintext'));
  const r = spawnSync('mosquitto_passwd', ['-h'], { encoding: 'utf8' });
  if (!r.error) {
    const dir = tempDir('passwd');
    try {
      const file = join(dir.path, 'pw');
      writeFileSync(file, '');
      spawnSync('mosquitto_passwd', ['-b', file, 'site-a', 'pbkdf2 secret']);
      spawnSync('mosquitto_passwd', ['-H', 'sha512', '-b', file, 'site-b', 'sha512 secret']);
      const pw = PasswordFile.load(file);
      assert.ok(pw.verify('site-a', 'pbkdf2 secret') && !pw.verify('site-a', 'sha512 secret'));
      assert.ok(pw.verify('site-b', 'sha512 secret') && !pw.verify('site-b', ''));
      assert.ok(!pw.verify('nobody', 'pbkdf2 secret'));
    } finally {
      dir.cleanup();
    }
  }
  assert.throws(() => PasswordFile.parse('site-a:secret\n', 'pw'), /pw line 1: the password of "site-a" is not a \$7\$/);
  assert.throws(() => PasswordFile.parse(`a:${h}\na:${h}\n`, 'pw'), /line 2: user "a" appears twice/);
  const text = setPasswordLine(setPasswordLine('', 'a', 'first pw', 1000), 'a', 'second pw', 1000);
  assert.equal(text.trim().split('\n').length, 1);
  assert.ok(PasswordFile.parse(text, 'pw').verify('a', 'second pw'));
});

test('access rules: subscriptions must stay inside what a role may read; publishing only on its own topics', () => {
  assert.ok(filterCovers('a/+/c', 'a/b/c') && filterCovers('a/+/c', 'a/+/c') && filterCovers('a/#', 'a/b/+') && filterCovers('a/#', 'a'));
  assert.ok(!filterCovers('a/+/c', 'a/#') && !filterCovers('a/b/c', 'a/+/c') && !filterCovers('a/+', 'a/b/c') && !filterCovers('a/b', '#'));
  const agent = rightsFor({ username: 'site-a', role: 'agent', read: [], write: [] }, 'fl/x');
  assert.ok(mayPublish(agent, 'fl/x/round/7/update/site-a') && !mayPublish(agent, 'fl/x/round/7/update/site-ab'));
  assert.ok(!mayPublish(agent, 'fl/x/round') && !mayPublish(agent, 'fl/x/model/latest') && !mayPublish(agent, '$SYS/x'));
  assert.ok(maySubscribe(agent, 'fl/x/model/+/+') && maySubscribe(agent, 'fl/x/round/+/ack/site-a'));
  assert.ok(!maySubscribe(agent, 'fl/x/round/+/ack/+') && !maySubscribe(agent, 'fl/x/#') && !maySubscribe(agent, 'fl/x/a#'));
  const policy = new AccessPolicy(testAccess());
  const acl = renderMosquittoAcl(policy, 'access.json');
  assert.match(acl, /^user site-a\n(topic .*\n)*topic write fl\/test\/round\/\+\/update\/site-a$/m);
  assert.match(acl, /^user aggregator$/m);
  assert.ok(!/pattern|allow_anonymous/.test(acl.replace(/^#.*$/gm, '')), 'no patterns, nothing for anonymous');
  assert.throws(() => accessFileSchema.parse({ topicRoot: 'fl/x', users: [{ username: 'cam', role: 'camera' }] }), /need \\"agent\\"/);
  assert.throws(() => accessFileSchema.parse({ topicRoot: 'fl/#', users: [{ username: 'a', role: 'mes' }] }), /topic root/);
});

test('broker config: anonymous access is off unless asked for, and every missing piece is named', () => {
  const bad = (c: unknown, re: RegExp) => assert.throws(() => parseConfig(brokerConfigSchema, c, 'broker.json'), re);
  bad({}, /"auth": required: anonymous access is off/);
  bad({ auth: { accessFile: 'a.json' } }, /"auth.passwordFile": required unless tls.identityFromCertificate/);
  bad({ allowAnonymous: true, auth: { accessFile: 'a', passwordFile: 'p' } }, /"allowAnonymous"/);
  bad({ auth: { accessFile: 'a', passwordFile: 'p' }, tls: { certFile: 'c', keyFile: 'k', requireClientCert: true } }, /"tls.caFile": required/);
  bad(
    { auth: { accessFile: 'a' }, tls: { certFile: 'c', keyFile: 'k', identityFromCertificate: true } },
    /"tls.identityFromCertificate": needs tls.requireClientCert/,
  );
  bad({ allowAnonymous: true, plainListener: false }, /"plainListener"/);
  assert.equal(parseConfig(brokerConfigSchema, { allowAnonymous: true }, 'b').port, 1883);
});

test('embedded Aedes broker with the access file: every rule holds, anonymous and wrong logins are refused', { timeout: 90_000 }, async () => {
  const dir = tempDir('sec-aedes');
  const auth = writeAuthFiles(dir.path, testAccess(), ['intruder']);
  const broker = await startBroker(
    parseConfig(brokerConfigSchema, { host: '127.0.0.1', port: 0, auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile } }, 'test broker'),
    silentLogger(),
  );
  try {
    const connect = connector(broker.url);
    assert.match(await refusedLogin(connect, null), /Not authori[sz]ed|Bad user ?name or password/i);
    assert.match(await refusedLogin(connect, { username: 'site-a', password: 'wrong' }), /Not authori[sz]ed|Bad user ?name or password/i);
    assert.match(
      await refusedLogin(connect, { username: 'intruder', password: testPassword('intruder') }),
      /Not authori[sz]ed/i,
      'a password without a role is refused',
    );
    await securityScenario(connect, auth.credentials);
  } finally {
    await broker.close();
    dir.cleanup();
  }
});

test(
  'Mosquitto with the repository mosquitto.conf and the ACL rendered from the same access file: every rule holds',
  { timeout: 90_000, skip: noMosquitto },
  async () => {
    const dir = tempDir('sec-mosquitto');
    const broker = await startMosquitto(mosquitto!, dir.path, { extraUsers: ['intruder'] });
    try {
      const connect = connector(broker.url);
      assert.match(await refusedLogin(connect, null), /Not authori[sz]ed|Bad user ?name or password/i);
      assert.match(await refusedLogin(connect, { username: 'site-a', password: 'wrong' }), /Not authori[sz]ed|Bad user ?name or password/i);
      // Mosquitto lets a user without ACL lines connect, but it can do nothing:
      const intruder = await connect({ username: 'intruder', password: testPassword('intruder') });
      const msgs: string[] = [];
      intruder.on('message', (t) => msgs.push(t));
      await intruder.subscribeAsync('fl/test/#', { qos: 1 });
      const agg = await connect(broker.auth.credentials('aggregator'));
      await agg.publishAsync('fl/test/round', 'r', { qos: 1 });
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(msgs, []);
      intruder.end(true);
      agg.end(true);
      await securityScenario(connect, broker.auth.credentials);
    } finally {
      await broker.stop();
      dir.cleanup();
    }
  },
);

test(
  'TLS with client certificates (CN = user name) on both brokers; no certificate, no connection',
  { timeout: 90_000, skip: opensslAvailable() ? false : 'openssl is not installed' },
  async (t) => {
    const dir = tempDir('sec-tls');
    const pki = makeTestPki(dir.path, ['site-a', 'auditor', 'aggregator']);
    const tlsClient = (name: string) => ({ ca: readFileSync(pki.ca), cert: readFileSync(pki.clients[name]!.cert), key: readFileSync(pki.clients[name]!.key) });
    const check = async (url: string) => {
      const connect = connector(url, { ca: readFileSync(pki.ca), rejectUnauthorized: true });
      await refusedLogin(connect, { username: 'site-a', password: testPassword('site-a') }); // a password is not enough: a certificate is required
      const auditor = await connect(null, tlsClient('auditor'));
      const seen: string[] = [];
      auditor.on('message', (topic) => seen.push(topic));
      await auditor.subscribeAsync('fl/test/#', { qos: 1 });
      const agent = await connect(null, tlsClient('site-a'));
      await agent.publishAsync('fl/test/agent/site-a/status', 'ok', { qos: 1 });
      agent.publish('fl/test/round', 'forged', { qos: 1, retain: true });
      const agg = await connect(null, tlsClient('aggregator'));
      await agg.publishAsync('fl/test/events/marker', 'm', { qos: 1 });
      await new Promise((r) => setTimeout(r, 400));
      assert.ok(seen.includes('fl/test/agent/site-a/status'), 'the certificate named site-a: its own status goes through');
      assert.ok(!seen.includes('fl/test/round'), 'and the site-a rules apply');
      for (const c of [auditor, agent, agg]) c.end(true);
    };
    try {
      await t.test('embedded Aedes broker, TLS only', async () => {
        const auth = writeAuthFiles(dir.path, testAccess());
        const broker = await startBroker(
          parseConfig(
            brokerConfigSchema,
            {
              host: '127.0.0.1',
              plainListener: false,
              auth: { accessFile: auth.accessFile },
              tls: { port: 0, certFile: pki.server.cert, keyFile: pki.server.key, caFile: pki.ca, requireClientCert: true, identityFromCertificate: true },
            },
            'tls broker',
          ),
          silentLogger(),
        );
        try {
          assert.equal(broker.url, broker.tlsUrl);
          assert.match(broker.url, /^mqtts:/);
          await check(broker.tlsUrl!);
        } finally {
          await broker.close();
        }
      });
      await t.test('Mosquitto', { skip: noMosquitto }, async () => {
        const broker = await startMosquitto(mosquitto!, dir.path, {
          tls: { cert: pki.server.cert, key: pki.server.key, ca: pki.ca, requireCertificate: true, identityAsUsername: true },
        });
        try {
          await check(broker.tlsUrl!);
        } finally {
          await broker.stop();
        }
      });
    } finally {
      dir.cleanup();
    }
  },
);

test('the shipped example Mosquitto ACL is exactly what `fedline acl` makes of the example access file', () => {
  const accessFile = join(REPO_ROOT, 'examples', 'access.json');
  const policy = new AccessPolicy(loadConfigFile(accessFileSchema, accessFile));
  assert.equal(readFileSync(join(REPO_ROOT, 'examples', 'mosquitto.acl'), 'utf8'), renderMosquittoAcl(policy, 'examples/access.json'));
});
