import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pino } from 'pino';
import { startAggregator } from '../aggregator/main.js';
import { startAgent } from '../edge-agent/main.js';
import { agentConfig, aggregatorConfig, mosquittoAvailable, tempDir, tinyDataset, type FederationOptions } from './helpers.js';
import { credentials, HQ_ROOT, PLANT_AGENT, startBridgedBrokers } from './support/bridged-brokers.js';

/**
 * The federation's protocol through the shipped plant/HQ bridge (examples/mosquitto-bridge/):
 * the real aggregator at headquarters, a real agent that connects only to the plant broker under
 * the HQ root, as the plant service does. The round announcement and the chunked model come down
 * the bridge (retained), the chunked update goes up, the acks come down.
 */

const bin = mosquittoAvailable();
const skip = bin ? false : 'mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)';

for (const hqKind of ['mosquitto', 'embedded'] as const)
  test(
    `a real round through the bridge to ${hqKind} HQ: the HQ aggregator and an agent on the plant broker under the HQ root`,
    { skip, timeout: 240_000 },
    async () => {
      const dir = tempDir(`bridge-round-${hqKind}`);
      const brokers = await startBridgedBrokers(bin!, dir.path, hqKind);
      const logger = pino({ level: 'silent' });
      const base: Omit<FederationOptions, 'url'> = {
        dir: dir.path,
        agents: [PLANT_AGENT],
        rounds: 1,
        // Several chunks each way for the small model (about 42 KB): the chunked transfer, not one packet.
        chunkBytes: 16 * 1024,
        auth: credentials,
        aggregator: { federation: 'usb-inspection' },
        agent: { federation: 'usb-inspection' },
      };
      const stops: (() => Promise<void>)[] = [];
      try {
        await tinyDataset(join(dir.path, 'data'), [PLANT_AGENT]);
        const aggregator = await startAggregator(aggregatorConfig({ ...base, url: brokers.hq.url }), logger);
        stops.push(() => aggregator.close());
        const agent = await startAgent(agentConfig({ ...base, url: brokers.plant.url }, PLANT_AGENT), logger);
        stops.push(() => agent.close());
        const upBefore = brokers.link.bytesFromClients;
        const downBefore = brokers.link.bytesToClients;

        const result = await aggregator.aggregator.run();

        const [train, evaluation] = result.rounds;
        assert.equal(result.finalVersion, 1);
        assert.equal(train!.outcome, 'aggregate', train!.reason ?? undefined);
        assert.deepEqual(train!.participants, [PLANT_AGENT]);
        assert.equal(evaluation!.kind, 'evaluate');
        assert.deepEqual(Object.keys(evaluation!.baseMetrics), [PLANT_AGENT], 'the plant agent evaluated version 1, downloaded through the bridge');
        assert.ok(await aggregator.store.get(1), 'version 1 stored at HQ');
        const up = brokers.link.bytesFromClients - upBefore;
        const down = brokers.link.bytesToClients - downBefore;
        assert.ok(up >= train!.bytesUp, `the update crossed the bridge: ${up} bytes up for an update of ${train!.bytesUp} bytes`);
        console.log(
          `bridge round (${hqKind} HQ): ${up} bytes into HQ (update ${train!.bytesUp} bytes), ${down} bytes down to the plant (models of versions 0 and 1, announcements, acks) ` +
            `under ${HQ_ROOT}`,
        );
      } finally {
        for (const stop of stops.reverse()) await stop().catch(() => undefined);
        await brokers.stop();
        dir.cleanup();
      }
    },
  );
