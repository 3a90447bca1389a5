import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentConfigSchema, aggregatorConfigSchema } from '../shared/config/service-config.js';
import { loadConfigFile } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'fedline-config-'));
const write = (name: string, value: unknown) => {
  const file = join(dir, name);
  writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value));
  return file;
};
const agent = { agentId: 'site-a', federation: 'usb', mqtt: { url: 'mqtt://127.0.0.1:1883' }, stateDir: './state', data: { dir: 'images' } };

test('a valid agent config gets its defaults, absolute paths and is frozen', () => {
  const config = loadConfigFile(agentConfigSchema, write('agent.json', agent));
  assert.equal(config.stateDir, join(dir, 'state'));
  assert.equal(config.data.dir, join(dir, 'images'));
  assert.equal(config.data.testFraction, 0.2);
  assert.equal(config.training.backend, 'auto');
  assert.equal(config.mqtt.reconnectPeriodMs, 1000);
  assert.ok(Object.isFrozen(config) && Object.isFrozen(config.data));
  assert.throws(() => {
    (config as { agentId: string }).agentId = 'other';
  }, TypeError);
});

test('an unknown key is refused, naming the key and the file', () => {
  const file = write('typo.json', { ...agent, data: { dir: 'images', testFracton: 0.3 } });
  assert.throws(
    () => loadConfigFile(agentConfigSchema, file),
    (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.CONFIG_INVALID && e.message.includes(file) && e.message.includes('"data.testFracton"'),
  );
  assert.throws(() => loadConfigFile(agentConfigSchema, write('top.json', { ...agent, colour: 'red' })), /unknown key "colour"/);
});

test('wrong values name the key', () => {
  assert.throws(() => loadConfigFile(agentConfigSchema, write('frac.json', { ...agent, data: { dir: 'x', testFraction: 1.5 } })), /"data\.testFraction"/);
  assert.throws(() => loadConfigFile(agentConfigSchema, write('url.json', { ...agent, mqtt: { url: 'http://x' } })), /"mqtt\.url": must look like mqtt:\/\//);
  assert.throws(() => loadConfigFile(agentConfigSchema, write('id.json', { ...agent, agentId: 'a/b' })), /"agentId"/);
  assert.throws(() => loadConfigFile(agentConfigSchema, write('missing.json', { federation: 'usb' })), /"agentId"/);
  assert.throws(() => loadConfigFile(brokerConfigSchema, write('port.json', { port: 70000 })), /"port"/);
  assert.throws(
    () =>
      loadConfigFile(
        aggregatorConfigSchema,
        write('agg.json', { federation: 'usb', mqtt: { url: 'mqtt://h:1' }, stateDir: 's', agents: [], rounds: 1, task: {}, model: { classes: ['A', 'B'] } }),
      ),
    /"agents"/,
  );
});

test('unreadable and non-JSON files are reported with FL_CONFIG_READ / FL_CONFIG_PARSE', () => {
  assert.throws(
    () => loadConfigFile(agentConfigSchema, join(dir, 'absent.json')),
    (e: unknown) => (e as FedlineError).code === ErrorCodes.CONFIG_READ && /absent\.json/.test((e as Error).message),
  );
  assert.throws(
    () => loadConfigFile(agentConfigSchema, write('bad.json', '{"agentId": ')),
    (e: unknown) => (e as FedlineError).code === ErrorCodes.CONFIG_PARSE && /bad\.json/.test((e as Error).message),
  );
});
