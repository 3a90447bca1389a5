import { test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt from 'mqtt';
import { createBroker, type RunningBroker } from '../broker/broker.js';
import { pubsubOutputLimit } from '../broker/cluster.js';
import type { Logger } from '../shared/util/logger.js';
import { captureLogger, waitFor } from './helpers.js';
import { redisMissing, startRedis } from './support/redis.js';

const skip = redisMissing();

function clusterNode(redisUrl: string, nodeId: string, logger: Logger): Promise<RunningBroker> {
  return createBroker({ host: '127.0.0.1', port: 0, logger, cluster: { redisUrl, nodeId } });
}

const said = (lines: Record<string, unknown>[], text: string) => lines.some((l) => typeof l.msg === 'string' && l.msg.includes(text));

test('the pubsub class of client-output-buffer-limit is read from the CONFIG GET value', () => {
  assert.deepEqual(pubsubOutputLimit('normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60'), {
    hardBytes: 33554432,
    softBytes: 8388608,
    softSeconds: 60,
  });
  assert.deepEqual(pubsubOutputLimit('normal 0 0 0 replica 0 0 0 pubsub 0 0 0'), { hardBytes: 0, softBytes: 0, softSeconds: 0 });
  assert.equal(pubsubOutputLimit('normal 0 0 0'), null);
  assert.equal(pubsubOutputLimit('pubsub 1 x 2'), null);
});

test('a cluster node warns when Redis may drop a node that falls behind, and not when the pubsub limit is off', { skip, timeout: 60_000 }, async () => {
  for (const [args, warns] of [
    [[], true],
    [['--client-output-buffer-limit', 'pubsub', '0', '0', '0'], false],
  ] as const) {
    const redis = await startRedis(args);
    const { logger, lines } = captureLogger('info');
    try {
      const node = await clusterNode(redis.url, 'node-a', logger);
      await node.close();
      assert.equal(said(lines, 'client-output-buffer-limit pubsub'), warns, `Redis started with [${args.join(' ')}]`);
    } finally {
      await redis.stop();
    }
  }
});

test(
  'a node that Redis dropped for its pub/sub backlog subscribes again to every channel its clients need, also those ioredis forgot',
  { skip, timeout: 120_000 },
  async () => {
    // 256 KiB: one message of 1 MB puts node A's subscriber over the limit, as 32 MB of chunks did in bench:scale.
    const redis = await startRedis(['--client-output-buffer-limit', 'pubsub', '256kb', '0', '0']);
    const a = captureLogger('info');
    const nodes: RunningBroker[] = [];
    const clients: mqtt.MqttClient[] = [];
    try {
      nodes.push(await clusterNode(redis.url, 'node-a', a.logger), await clusterNode(redis.url, 'node-b', captureLogger('info').logger));
      const [nodeA, nodeB] = nodes as [RunningBroker, RunningBroker];
      const sub = await mqtt.connectAsync(nodeA.url, { protocolVersion: 4, reconnectPeriod: 0 });
      const pub = await mqtt.connectAsync(nodeB.url, { protocolVersion: 4, reconnectPeriod: 0 });
      clients.push(sub, pub);
      const got: string[] = [];
      sub.on('message', (topic, payload) => {
        if (topic === 'fl/t/round/1/ack/site-a') got.push(payload.toString('utf8'));
      });
      await sub.subscribeAsync(['fl/t/round/1/ack/site-a', 'fl/t/big'], { qos: 1 });
      await waitFor(
        'an ack published on node B to reach node A',
        async () => {
          await pub.publishAsync('fl/t/round/1/ack/site-a', 'before', { qos: 1 });
          return got.includes('before');
        },
        20_000,
        200,
      );
      // What the bench found after two drops in a row: the channel is gone from Redis and from
      // ioredis' own list, so its automatic re-subscription does not bring it back.
      const mq = (nodeA.aedes as unknown as { mq: { subConn: { unsubscribe(c: string): Promise<unknown> } } }).mq;
      await mq.subConn.unsubscribe('fl/t/round/1/ack/site-a');
      await pub.publishAsync('fl/t/big', Buffer.alloc(1024 * 1024, 7), { qos: 1 });
      await waitFor("node A's report that Redis dropped its subscriber and it re-subscribed", () => said(a.lines, 'channels re-subscribed'), 30_000);
      assert.ok(said(a.lines, "Redis dropped this node's subscriber connection"));
      await waitFor(
        'an ack published on node B after the drop to reach node A',
        async () => {
          await pub.publishAsync('fl/t/round/1/ack/site-a', 'after', { qos: 1 });
          return got.includes('after');
        },
        20_000,
        200,
      );
    } finally {
      for (const c of clients) await c.endAsync();
      for (const n of nodes) await n.close();
      await redis.stop();
    }
  },
);
