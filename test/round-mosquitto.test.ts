import { test } from 'node:test';
import { oneRoundScenario } from './round-scenario.js';
import { mosquittoAvailable, startMosquitto, tempDir } from './helpers.js';

const bin = mosquittoAvailable();

test(
  'one round through a real Mosquitto started with the repository mosquitto.conf (logins and ACL on)',
  { skip: bin ? false : 'mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)', timeout: 120_000 },
  async (t) => {
    const dir = tempDir('round-mosquitto');
    const broker = await startMosquitto(bin!, dir.path);
    t.after(async () => {
      await broker.stop();
      dir.cleanup();
    });
    await oneRoundScenario(broker.url, dir.path, broker.auth.credentials);
  },
);
