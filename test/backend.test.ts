import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AgentStatus } from '../shared/protocol/messages.js';
import { agentConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { loadTf } from '../training/backend.js';
import { captureLogger, startAedes, startFederation, tempDir } from './helpers.js';

async function nativeInstalled(): Promise<boolean> {
  for (const name of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(name);
      return true;
    } catch {
      // not installed
    }
  }
  return false;
}

test('auto backend: the best available; without the native packages it is WebAssembly, with a warning that says how to install the native one', async (t) => {
  if (await nativeInstalled()) {
    t.skip('a native tfjs backend is installed here: auto picks it');
    return;
  }
  const { logger, lines } = captureLogger();
  const runtime = await loadTf('auto', logger);
  assert.equal(runtime.backend, 'wasm');
  assert.equal(runtime.tf.getBackend(), 'wasm');
  assert.equal(runtime.native, false);
  const warning = lines.find((l) => l.level === 40 && String(l.msg).includes('WebAssembly'));
  assert.ok(warning, JSON.stringify(lines));
  for (const hint of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node', 'TFJS_NODE_CDN_STORAGE', 'TFJS_NODE_BASE_URI'])
    assert.ok(String(warning.msg).includes(hint), hint);
  assert.equal(await loadTf('cpu'), runtime, 'one tfjs runtime per process');
});

test('training.backend accepts auto, tensorflow, wasm and cpu, nothing else', () => {
  const base = { agentId: 'a', federation: 'f', mqtt: { url: 'mqtt://127.0.0.1:1883' }, stateDir: '/tmp/x', data: { dir: '/tmp/d' } };
  for (const backend of ['auto', 'tensorflow', 'wasm', 'cpu'])
    assert.equal(parseConfig(agentConfigSchema, { ...base, training: { backend } }, 't').training.backend, backend);
  assert.throws(() => parseConfig(agentConfigSchema, { ...base, training: { backend: 'webgl' } }, 'agent.json'), /training\.backend/);
});

test('the agent reports its backend in its status', { timeout: 120_000 }, async () => {
  const dir = tempDir('backend-status');
  const broker = await startAedes();
  try {
    const runtime = await loadTf('auto');
    const fed = await startFederation({
      url: broker.url,
      dir: dir.path,
      agents: ['site-a'],
      rounds: 1,
      agent: { training: { backend: 'auto', shuffleSeed: 1 } },
    });
    try {
      const seen: (string | null)[] = [];
      fed.agents[0]!.agent.on('state', (s: AgentStatus) => seen.push(s.backend));
      const result = await fed.aggregator.aggregator.run();
      assert.equal(result.rounds[0]!.outcome, 'aggregate');
      assert.ok(seen.includes(runtime.backend), `status backends: ${seen.join(', ')}`);
    } finally {
      await fed.stop();
    }
  } finally {
    await broker.close();
    dir.cleanup();
  }
});
