import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, mosquittoAvailable, startFederation, startMosquitto, tempDir, waitFor } from '../helpers.js';
import { ProcessFederation } from '../support/process-federation.js';
import { TcpProxy } from '../support/tcp-proxy.js';

interface Broker {
  url: string;
  port: number;
  auth?: (user: string) => { username: string; password: string };
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Fault 3: the broker restarts in the middle of a round, while agents upload through a slow link.
 * The round must complete with both agents, and (training being deterministic) its model must be
 * bit-identical to the model of the same round without a restart.
 */
async function brokerScenario(broker: Broker, dir: string, restart: boolean): Promise<Buffer> {
  const proxy = await TcpProxy.start(broker.port);
  proxy.uploadBytesPerSec = 12_000;
  const fed = await startFederation({
    url: proxy.url,
    dir,
    agents: ['site-a', 'site-b'],
    rounds: 1,
    chunkBytes: 1024,
    agent: { ackTimeoutMs: 1500 } as never,
    ...(broker.auth ? { auth: broker.auth } : {}),
  });
  try {
    const run = fed.aggregator.aggregator.run();
    if (restart) {
      // Restart while the agents are uploading (both evaluated the base model and started training).
      await waitFor(
        'both agents to report their evaluation',
        () => Object.keys(fed.aggregator.aggregator.history()[0]?.baseMetrics ?? {}).length === 2,
        60_000,
        20,
      );
      await new Promise((r) => setTimeout(r, 1500));
      await broker.restart();
    }
    const result = await run;
    assert.equal(result.rounds[0]!.outcome, 'aggregate');
    assert.deepEqual(result.rounds[0]!.participants, ['site-a', 'site-b']);
    assert.deepEqual(Object.keys(result.rounds[1]!.baseMetrics).sort(), ['site-a', 'site-b'], 'both agents evaluated the new model');
    return readFileSync(join(fed.aggregator.store.dir(1), 'weights.bin'));
  } finally {
    await fed.stop();
    await proxy.close();
  }
}

async function brokerRestartScenario(broker: Broker, dir: string): Promise<void> {
  const reference = await brokerScenario(broker, join(dir, 'reference'), false);
  const restarted = await brokerScenario(broker, join(dir, 'restarted'), true);
  assert.ok(reference.equals(restarted), 'the round with a broker restart gives the same model, bit for bit');
}

test('the embedded Aedes broker (its own process, no persistence) restarts mid-round: the round completes', { timeout: 180_000 }, async () => {
  const dir = tempDir('fault-broker-aedes');
  const procs = new ProcessFederation(dir.path);
  const port = await freePort();
  // This test is about restarts, not access control: the broker admits anonymous clients here.
  const config = procs.writeConfig('broker', { host: '127.0.0.1', port, allowAnonymous: true });
  try {
    await procs.start('broker', 'broker', config);
    await brokerRestartScenario(
      {
        url: `mqtt://127.0.0.1:${port}`,
        port,
        restart: async () => {
          await procs.kill('broker');
          await new Promise((r) => setTimeout(r, 500));
          await procs.start('broker', 'broker', config);
        },
        stop: () => procs.stopAll(),
      },
      dir.path,
    );
  } finally {
    await procs.stopAll();
    dir.cleanup();
  }
});

const bin = mosquittoAvailable();
test(
  'Mosquitto with persistence is killed and restarted mid-round: the round completes',
  { skip: bin ? false : 'mosquitto is not installed', timeout: 180_000 },
  async () => {
    const dir = tempDir('fault-broker-mosquitto');
    let mosq = await startMosquitto(bin!, dir.path);
    const port = mosq.port;
    try {
      await brokerRestartScenario(
        {
          url: mosq.url,
          port,
          auth: mosq.auth.credentials,
          restart: async () => {
            await mosq.kill();
            mosq = await startMosquitto(bin!, dir.path, { port });
          },
          stop: () => mosq.stop(),
        },
        dir.path,
      );
    } finally {
      await mosq.stop();
      dir.cleanup();
    }
  },
);
