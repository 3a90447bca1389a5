import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AccessPolicy, accessFileSchema } from '../broker/access.js';
import { PasswordFile } from '../broker/passwords.js';
import { agentConfigSchema, aggregatorConfigSchema, mqttPassword } from '../shared/config/service-config.js';
import { loadConfigFile } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { loadExperimentConfig } from '../experiment/runner.js';
import { inspectConfigSchema } from '../shared/config/inspect-config.js';
import { plantConfigSchema } from '../shared/config/plant-config.js';
import { loadSigningKey, loadVerifyKey, signModel, verifyModelSignature } from '../shared/protocol/model-signature.js';
import { dashboardConfigSchema } from '../dashboard/dashboard-config.js';
import { REPO_ROOT } from './helpers.js';

const dir = join(REPO_ROOT, 'examples');

test('every example config in examples/ is valid', () => {
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  assert.ok(files.length >= 8);
  for (const f of files.filter((x) => x.startsWith('experiment'))) assert.doesNotThrow(() => loadExperimentConfig(join(dir, f)), f);
  for (const f of files.filter((x) => !x.startsWith('experiment'))) {
    const schema = f.startsWith('agent')
      ? agentConfigSchema
      : f.startsWith('aggregator')
        ? aggregatorConfigSchema
        : f.startsWith('inspect')
          ? inspectConfigSchema
          : f.startsWith('plant')
            ? plantConfigSchema
            : f.startsWith('access')
              ? accessFileSchema
              : f.startsWith('dashboard')
                ? dashboardConfigSchema
                : brokerConfigSchema;
    assert.doesNotThrow(() => loadConfigFile(schema, join(dir, f)), f);
  }
  const agg = loadConfigFile(aggregatorConfigSchema, join(dir, 'aggregator.json'));
  for (const a of agg.agents) assert.ok(files.includes(`agent-${a}.json`), `an example config for ${a}`);
});

test('the example three-site federation logs in: every service has a user with the right role, and its password matches the password file', () => {
  const access = new AccessPolicy(loadConfigFile(accessFileSchema, join(dir, 'access.json')));
  const passwords = PasswordFile.load(join(dir, 'passwd'));
  const agg = loadConfigFile(aggregatorConfigSchema, join(dir, 'aggregator.json'));
  assert.equal(access.topicRoot, `fl/${agg.federation}`);
  const logins: [string, { username?: string; password?: string; passwordFile?: string }, string][] = [['aggregator.json', agg.mqtt, 'aggregator']];
  for (const a of agg.agents) logins.push([`agent-${a}.json`, loadConfigFile(agentConfigSchema, join(dir, `agent-${a}.json`)).mqtt, 'agent']);
  logins.push(['inspect-site-a.json', loadConfigFile(inspectConfigSchema, join(dir, 'inspect-site-a.json')).mqtt, 'inspector']);
  logins.push(['dashboard.json', loadConfigFile(dashboardConfigSchema, join(dir, 'dashboard.json')).mqtt, 'dashboard']);
  for (const [file, mqtt, role] of logins) {
    assert.ok(mqtt.username, `${file} has an MQTT user`);
    assert.equal(access.rights(mqtt.username!)?.role, role, `${file}: ${mqtt.username} is a ${role}`);
    assert.ok(passwords.verify(mqtt.username!, mqtt.password ?? mqttPassword(mqtt)!), `${file}: the password file accepts ${mqtt.username}'s password`);
  }
  for (const a of agg.agents) assert.equal(loadConfigFile(agentConfigSchema, join(dir, `agent-${a}.json`)).agentId, a, 'an agent logs in under its own id');
  assert.ok(
    readFileSync(join(dir, 'passwd'), 'utf8')
      .split('\n')
      .every((l) => l === '' || /^[^:]+:\$7\$\d+\$/.test(l)),
    'only hashes in the password file',
  );
});

test('signing is on in the examples: the aggregator signs every model version and every agent and the inspection service verify with its public key', () => {
  const agg = loadConfigFile(aggregatorConfigSchema, join(dir, 'aggregator.json'));
  assert.ok(agg.signingKeyFile, 'aggregator.json signs');
  const signature = signModel(loadSigningKey(agg.signingKeyFile), 3, 'ab'.repeat(32));
  const verifiers = [
    ...agg.agents.map((a) => loadConfigFile(agentConfigSchema, join(dir, `agent-${a}.json`)).modelPublicKeyFile),
    loadConfigFile(inspectConfigSchema, join(dir, 'inspect-site-a.json')).modelPublicKeyFile,
  ];
  for (const file of verifiers) {
    assert.ok(file, 'every agent and the inspection service verify');
    assert.ok(verifyModelSignature(loadVerifyKey(file), 3, 'ab'.repeat(32), signature));
    assert.ok(!verifyModelSignature(loadVerifyKey(file), 4, 'ab'.repeat(32), signature), 'the signature binds the version');
  }
});
