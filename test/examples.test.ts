import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { agentConfigSchema, aggregatorConfigSchema, brokerConfigSchema, loadConfigFile } from '../shared/config.js';
import { REPO_ROOT } from './helpers.js';

test('every example config in examples/ is valid', () => {
  const dir = join(REPO_ROOT, 'examples');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  assert.ok(files.length >= 5);
  for (const f of files) {
    const schema = f.startsWith('agent') ? agentConfigSchema : f.startsWith('aggregator') ? aggregatorConfigSchema : brokerConfigSchema;
    assert.doesNotThrow(() => loadConfigFile(schema, join(dir, f)), f);
  }
  const agg = loadConfigFile(aggregatorConfigSchema, join(dir, 'aggregator.json'));
  for (const a of agg.agents) assert.ok(files.includes(`agent-${a}.json`), `an example config for ${a}`);
});
