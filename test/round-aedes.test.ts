import { test } from 'node:test';
import { oneRoundScenario } from './round-scenario.js';
import { startAedes, tempDir } from './helpers.js';

test('one round over the embedded Aedes broker: the global model is the sample-weighted average and both agents get it', { timeout: 120_000 }, async (t) => {
  const dir = tempDir('round-aedes');
  const broker = await startAedes();
  t.after(async () => {
    await broker.close();
    dir.cleanup();
  });
  await oneRoundScenario(broker.url, dir.path);
});
