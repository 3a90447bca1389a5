import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { createBroker, type RunningBroker } from '../broker/broker.js';
import { startAggregator } from '../aggregator/main.js';
import { startAgent, type RunningAgent } from '../edge-agent/main.js';
import { mqttConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { agentConfig, aggregatorConfig, captureLogger, freePort, tempDir, tinyDataset, waitFor, type FederationOptions } from './helpers.js';
import { ProcessFederation } from './support/process-federation.js';
import { TcpProxy } from './support/tcp-proxy.js';
import { redisMissing, startRedis } from './support/redis.js';

const skip = redisMissing();

/** One node of a cluster in this process. */
function clusterNode(redisUrl: string, nodeId: string, heartbeatIntervalMs?: number): Promise<RunningBroker> {
  return createBroker({ host: '127.0.0.1', port: 0, cluster: { redisUrl, nodeId, ...(heartbeatIntervalMs ? { heartbeatIntervalMs } : {}) } });
}

/** The retained payloads (text) on one topic, from a fresh client. */
async function retainedPayloads(url: string, topic: string): Promise<string[]> {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  const got: string[] = [];
  client.on('message', (_t, payload, packet) => {
    if (packet.retain) got.push(payload.toString('utf8'));
  });
  await client.subscribeAsync(topic, { qos: 1 });
  // A retained message comes right after the SUBACK; a ping round trip after it proves nothing more is queued.
  await client.publishAsync(`${topic}/probe-none`, '', { qos: 1 }).catch(() => undefined);
  await waitFor('the retained status', () => got.length > 0, 10_000);
  await client.endAsync();
  return got;
}

/** Retained messages a fresh client gets from `url` under `filter`. */
async function retainedTopics(url: string, filter: string, settleMs = 1500): Promise<string[]> {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  const topics: string[] = [];
  client.on('message', (topic, _payload, packet) => {
    if (packet.retain) topics.push(topic);
  });
  await client.subscribeAsync(filter, { qos: 1 });
  // Retained messages are sent right after the SUBACK; wait until none came for a while.
  let seen = -1;
  await waitFor(
    'retained messages to stop arriving',
    () => {
      const done = seen === topics.length;
      seen = topics.length;
      return done;
    },
    30_000,
    settleMs,
  );
  await client.endAsync();
  return topics;
}

test('the broker config takes a cluster block, validated', () => {
  const ok = parseConfig(brokerConfigSchema, { allowAnonymous: true, cluster: { redisUrl: 'redis://127.0.0.1:6379/2', nodeId: 'node-a' } }, 'test');
  assert.equal(ok.cluster?.nodeId, 'node-a');
  assert.throws(() => parseConfig(brokerConfigSchema, { allowAnonymous: true, cluster: { redisUrl: 'http://x', nodeId: 'a' } }, 'test'), /cluster\.redisUrl/);
  assert.throws(() => parseConfig(brokerConfigSchema, { allowAnonymous: true, cluster: { redisUrl: 'redis://h:1' } }, 'test'), /cluster\.nodeId/);
  const mqttOk = parseConfig(mqttConfigSchema, { url: 'mqtt://a:1883', urls: ['mqtt://b:1883', 'mqtts://c:8883'] }, 'test');
  assert.deepEqual(mqttOk.urls, ['mqtt://b:1883', 'mqtts://c:8883']);
  assert.throws(() => parseConfig(mqttConfigSchema, { url: 'mqtt://a:1883', urls: ['http://b'] }, 'test'), /urls\.0/);
});

test('a cluster node whose Redis does not answer stops with a clear error', async () => {
  const port = await freePort();
  await assert.rejects(
    createBroker({ host: '127.0.0.1', port: 0, cluster: { redisUrl: `redis://127.0.0.1:${port}`, nodeId: 'n1', connectTimeoutMs: 1500 } }),
    (err: Error & { code?: string }) => err.code === 'FL_TRANSPORT' && /cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+ within 1500 ms/.test(err.message),
  );
});

test('agents on two cluster nodes take part in one round; retained announcement and model reach node B', { skip, timeout: 240_000 }, async () => {
  const dir = tempDir('cluster-round');
  const redis = await startRedis();
  const nodes: RunningBroker[] = [];
  const agents: RunningAgent[] = [];
  try {
    nodes.push(await clusterNode(redis.url, 'node-a'), await clusterNode(redis.url, 'node-b'));
    const [a, b] = nodes as [RunningBroker, RunningBroker];
    const o: FederationOptions = { url: a.url, dir: dir.path, agents: ['site-a', 'site-b', 'site-c'], rounds: 1, chunkBytes: 4096 };
    await tinyDataset(join(dir.path, 'data'), o.agents);
    const logger = captureLogger('warn').logger;
    const aggregator = await startAggregator(aggregatorConfig(o), logger);
    try {
      // site-a on node A with the aggregator; site-b and site-c on node B.
      agents.push(await startAgent(agentConfig(o, 'site-a'), logger));
      for (const id of ['site-b', 'site-c']) agents.push(await startAgent(agentConfig({ ...o, url: b.url }, id), logger));
      await waitFor('clients on both nodes', () => a.connectedClients() === 2 && b.connectedClients() === 2, 30_000);
      const result = await aggregator.aggregator.run();
      assert.equal(result.rounds[0]!.outcome, 'aggregate');
      assert.deepEqual([...result.rounds[0]!.participants].sort(), ['site-a', 'site-b', 'site-c'], 'the agents on node B sent their updates through node A');
      assert.deepEqual(
        Object.keys(result.rounds[1]!.baseMetrics).sort(),
        ['site-a', 'site-b', 'site-c'],
        'the agents on node B loaded the new model from node A',
      );
      // A newcomer on node B gets what the aggregator retained on node A: the round announcement, manifest and model chunks.
      const retained = await retainedTopics(b.url, 'fl/test/#');
      assert.ok(retained.includes('fl/test/round'), 'the round announcement is retained on node B');
      assert.ok(retained.includes('fl/test/model/latest'), 'the model manifest is retained on node B');
      assert.ok(retained.filter((t) => t.startsWith('fl/test/model/1/')).length > 1, 'the new model chunks are retained on node B');
    } finally {
      for (const ag of agents) await ag.close().catch(() => undefined);
      await aggregator.close().catch(() => undefined);
    }
  } finally {
    for (const n of nodes) await n.close();
    await redis.stop();
    dir.cleanup();
  }
});

test(
  'a cluster node is killed while an agent uploads through it: the agent moves to node A and the round completes, only missing chunks resent',
  { skip, timeout: 240_000 },
  async () => {
    const dir = tempDir('cluster-kill');
    const redis = await startRedis();
    const procs = new ProcessFederation(dir.path);
    let nodeA: RunningBroker | null = null;
    let proxy: TcpProxy | null = null;
    const agents: RunningAgent[] = [];
    try {
      // Short node heartbeats, so that node A declares node B dead (and handles its wills) within the test.
      const heartbeatIntervalMs = 1000;
      nodeA = await clusterNode(redis.url, 'node-a', heartbeatIntervalMs);
      const portB = await freePort();
      const configB = procs.writeConfig('node-b', {
        host: '127.0.0.1',
        port: portB,
        allowAnonymous: true,
        cluster: { redisUrl: redis.url, nodeId: 'node-b', heartbeatIntervalMs },
      });
      await procs.start('node-b', 'broker', configB);
      // A slow uplink in front of node B, so that site-b is still uploading when node B dies.
      proxy = await TcpProxy.start(portB);
      proxy.uploadBytesPerSec = 12_000;
      const o: FederationOptions = { url: nodeA.url, dir: dir.path, agents: ['site-a', 'site-b'], rounds: 1, chunkBytes: 1024 };
      await tinyDataset(join(dir.path, 'data'), o.agents);
      const { logger, lines } = captureLogger('info');
      const aggregator = await startAggregator(aggregatorConfig(o), logger.child({ svc: 'aggregator' }));
      try {
        agents.push(await startAgent(agentConfig(o, 'site-a'), logger.child({ svc: 'site-a' })));
        const b = agentConfig(o, 'site-b');
        agents.push(await startAgent({ ...b, mqtt: { ...b.mqtt, url: proxy.url, urls: [nodeA.url] } }, logger.child({ svc: 'site-b' })));
        const run = aggregator.aggregator.run();
        const counters = aggregator.aggregator.counters;
        // site-a is done quickly over loopback; site-b's chunks trickle in through the proxy.
        await waitFor('site-b to be part-way through its upload', () => proxy!.bytesFromClients > 40_000 && counters.get('update-chunk') > 0, 120_000, 20);
        const storedAtKill = counters.get('update-chunk');
        await procs.kill('node-b');
        const result = await run;
        assert.equal(result.rounds[0]!.outcome, 'aggregate');
        assert.deepEqual([...result.rounds[0]!.participants].sort(), ['site-a', 'site-b']);
        const switched = lines.find((l) => l.svc === 'site-b' && String(l.msg).startsWith('MQTT: switched to broker'));
        assert.ok(switched, 'site-b logged its switch to node A');
        assert.equal(switched.to, nodeA.url);
        const accepted = (svc: string) => lines.find((l) => l.svc === svc && l.msg === 'update accepted by the aggregator') as { resent: number } | undefined;
        assert.equal(accepted('site-a')?.resent, 0, 'site-a (on the surviving node) resent nothing');
        const stored = counters.get('update-chunk');
        const resentB = accepted('site-b')!.resent;
        assert.ok(stored > storedAtKill, 'site-b was still uploading when node B died');
        // Nothing lost: every chunk stored once; nothing resent beyond what the aggregator lacked when node B died.
        assert.ok(resentB <= stored - storedAtKill, `site-b resent ${resentB} chunks; ${stored - storedAtKill} were missing when node B died`);
        // Node A declares node B dead and runs its will check twice more: site-b's will from node B must not be published (it is online on A).
        const brokers = (nodeA.aedes as unknown as { brokers: Record<string, number> }).brokers;
        await waitFor('node A to declare node B dead', () => !('node-b' in brokers), 60_000, 100);
        const since = Date.now();
        await waitFor('two more will checks on node A', () => Date.now() - since > 9 * heartbeatIntervalMs, 60_000, 200);
        const status = await retainedPayloads(nodeA.url, 'fl/test/agent/site-b/status');
        assert.equal(status.length, 1);
        assert.doesNotMatch(status[0]!, /offline/, 'site-b, alive on node A, is not declared offline by its will on dead node B');
        process.stdout.write(
          `# cluster kill: chunks stored ${stored} (at the kill ${storedAtKill}), site-b resent ${resentB}, duplicates ${counters.get('duplicate-chunk')}\n`,
        );
      } finally {
        for (const ag of agents) await ag.close().catch(() => undefined);
        await aggregator.close().catch(() => undefined);
      }
    } finally {
      await proxy?.close();
      await procs.stopAll();
      await nodeA?.close();
      await redis.stop();
      dir.cleanup();
    }
  },
);
