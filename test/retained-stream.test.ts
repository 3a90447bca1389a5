import { test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt, { type MqttClient } from 'mqtt';
import { pack } from 'msgpackr';
import { createBroker, type RunningBroker } from '../broker/broker.js';
import { RETAINED_HASH, RETAINED_READ_AHEAD, retainedLazily, type RetainedStore } from '../broker/retained-stream.js';
import { waitFor } from './helpers.js';
import { redisMissing, startRedis } from './support/redis.js';

/** The retained hash in memory, counting the values read. */
class MemoryStore implements RetainedStore {
  reads = 0;
  constructor(readonly hash: Map<string, Buffer | null>) {}
  hkeys(key: string): Promise<string[]> {
    assert.equal(key, RETAINED_HASH);
    return Promise.resolve([...this.hash.keys()]);
  }
  hgetBuffer(key: string, field: string): Promise<Buffer | null> {
    assert.equal(key, RETAINED_HASH);
    this.reads++;
    return Promise.resolve(this.hash.get(field) ?? null);
  }
}

const stored = (topic: string, text: string) => pack({ cmd: 'publish', topic, payload: Buffer.from(text), qos: 1, retain: true });

test('retained messages are read a few ahead of the client, not all at once', async () => {
  const many = Array.from({ length: 40 }, (_, i) => `fl/a/model/2/chunk/${i}`);
  const store = new MemoryStore(new Map(many.map((t) => [t, stored(t, t)])));
  const it = retainedLazily(store, ['fl/a/model/2/chunk/+']);
  await it.next();
  assert.ok(store.reads <= RETAINED_READ_AHEAD + 1, `${store.reads} of 40 values read for the first message`);
  let n = 1;
  for await (const _ of it) n++;
  assert.equal(n, 40);
  assert.equal(store.reads, 40, 'each value read once');
});

test('retained messages come each once, matched as MQTT filters', async () => {
  const store = new MemoryStore(
    new Map([
      ['fl/a/model/1/chunk/0', stored('fl/a/model/1/chunk/0', 'c0')],
      ['fl/a/model/1/chunk/1', stored('fl/a/model/1/chunk/1', 'c1')],
      ['fl/a/model/1/chunk/2', stored('fl/a/model/1/chunk/2', 'c2')],
      ['fl/a/round', stored('fl/a/round', 'r')],
      ['fl/b/round', stored('fl/b/round', 'other federation')],
      ['$SYS/x', stored('$SYS/x', 'broker')],
      // Cleared between the names and the value: skipped.
      ['fl/a/model/1/chunk/3', null],
    ]),
  );
  const it = retainedLazily(store, ['fl/a/model/1/chunk/+', 'fl/a/model/1/chunk/1', 'fl/a/round']);
  const first = await it.next();
  const rest: string[] = [];
  for await (const p of it) rest.push(`${p.topic}=${p.payload.toString()}`);
  assert.deepEqual(
    [`${first.value!.topic}=${first.value!.payload.toString()}`, ...rest].sort(),
    ['fl/a/model/1/chunk/0=c0', 'fl/a/model/1/chunk/1=c1', 'fl/a/model/1/chunk/2=c2', 'fl/a/round=r'],
    'chunk 1 matched twice and came once; the other federation, $SYS and the cleared topic did not come',
  );
  assert.ok(Buffer.isBuffer(first.value!.payload), 'payloads are Buffers, as Aedes writes them');

  const everything: string[] = [];
  for await (const p of retainedLazily(store, ['#'])) everything.push(p.topic);
  assert.ok(!everything.includes('$SYS/x'), '# does not match $ topics (MQTT 3.1.1 §4.7.2)');
});

test(
  'on a cluster, a newcomer on another node gets every retained message byte for byte, once, through the lazy stream',
  { skip: redisMissing(), timeout: 120_000 },
  async () => {
    // Everything started inside the try: a failure while starting must not leave Redis running.
    const redis = await startRedis(['--client-output-buffer-limit', 'pubsub', '0', '0', '0']);
    let a: RunningBroker | undefined;
    let b: RunningBroker | undefined;
    let publisher: MqttClient | undefined;
    let reader: MqttClient | undefined;
    try {
      a = await createBroker({ port: 0, cluster: { redisUrl: redis.url, nodeId: 'node-a' } });
      b = await createBroker({ port: 0, cluster: { redisUrl: redis.url, nodeId: 'node-b' } });
      publisher = await mqtt.connectAsync(a.url, { protocolVersion: 4, reconnectPeriod: 0 });
      reader = await mqtt.connectAsync(b.url, { protocolVersion: 4, reconnectPeriod: 0 });
      // 24 chunks of 256 KiB (6 MiB), each with its own bytes, stored by the persistence of node A.
      const chunks = Array.from({ length: 24 }, (_, i) => Buffer.alloc(256 * 1024, i + 1));
      for (const [i, c] of chunks.entries()) await publisher.publishAsync(`fl/t/model/1/chunk/${i}`, c, { qos: 1, retain: true });
      await publisher.publishAsync('fl/t/round', 'announcement', { qos: 1, retain: true });
      const got = new Map<string, Buffer>();
      let duplicates = 0;
      reader.on('message', (topic, payload, packet) => {
        if (!packet.retain) return;
        if (got.has(topic)) duplicates++;
        got.set(topic, payload);
      });
      await reader.subscribeAsync({ 'fl/t/model/1/chunk/+': { qos: 1 }, 'fl/t/model/1/chunk/5': { qos: 1 }, 'fl/t/round': { qos: 1 } });
      await waitFor('every retained message on node B', () => got.size === 25, 60_000);
      for (const [i, c] of chunks.entries()) assert.ok(got.get(`fl/t/model/1/chunk/${i}`)?.equals(c), `chunk ${i} byte for byte`);
      assert.equal(got.get('fl/t/round')?.toString(), 'announcement');
      assert.equal(duplicates, 0, 'chunk 5, matched by two filters of one SUBSCRIBE, came once');
    } finally {
      await reader?.endAsync();
      await publisher?.endAsync();
      await b?.close();
      await a?.close();
      await redis.stop();
    }
  },
);
