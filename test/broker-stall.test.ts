import assert from 'node:assert/strict';
import { connect as netConnect, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { createBroker, type RunningBroker } from '../broker/broker.js';
import { StallGuard, type WatchedSocket } from '../broker/stall-guard.js';
import { connectPacket, publishPacketBytes, subscribePacket } from './support/raw-mqtt.js';
import { waitFor } from './helpers.js';
import { redisMissing, startRedis } from './support/redis.js';
import { CLUSTER_DELIVERY_CONCURRENCY } from '../broker/cluster.js';

/** A socket whose buffer the test sets: `queued` bytes waiting, `flushed` gone to the kernel. */
class FakeSocket implements WatchedSocket {
  queued = 0;
  flushed = 0;
  destroyed = false;
  get bytesWritten() {
    return this.flushed + this.queued;
  }
  get writableLength() {
    return this.queued;
  }
  destroy() {
    this.destroyed = true;
  }
}

test('StallGuard: progress keeps a connection, a whole timeout without progress closes it, an empty buffer is no stall', () => {
  let nowMs = 0;
  const stalls: number[] = [];
  const guard = new StallGuard<FakeSocket>(
    1000,
    (_s, info) => stalls.push(info.stalledMs),
    () => nowMs,
  );
  const slow = new FakeSocket();
  const idle = new FakeSocket();
  const frozen = new FakeSocket();
  for (const s of [slow, idle, frozen]) guard.watch(s);
  slow.queued = frozen.queued = 10_000_000;
  for (nowMs = 250; nowMs <= 5000; nowMs += 250) {
    // The slow reader takes 1 KiB per check out of a backlog that never empties.
    slow.flushed += 1024;
    guard.check();
  }
  assert.equal(slow.destroyed, false, 'a reader that takes any bytes stays, however far behind');
  assert.equal(idle.destroyed, false, 'nothing waiting: no stall, however long');
  assert.equal(frozen.destroyed, true, 'a reader that takes nothing for the timeout is closed');
  assert.deepEqual(stalls, [1000]);
  assert.equal(guard.closed, 1);

  // Progress resets the clock: a stall counts from the last byte read.
  const paused = new FakeSocket();
  guard.watch(paused);
  paused.queued = 100;
  nowMs += 900;
  paused.flushed += 1;
  guard.check();
  nowMs += 900;
  guard.check();
  assert.equal(paused.destroyed, false, '900 ms since the last byte: not yet');
  nowMs += 100;
  guard.check();
  assert.equal(paused.destroyed, true);
});

const STALL_MS = 3000;
const MESSAGE_BYTES = 512 * 1024;
/** 32 MiB: more than the kernel's loopback buffers hold (about 10 MiB), so a backlog stays in the broker. */
const MESSAGES = 64;
const TOPIC = 'bulk/data';

let broker: RunningBroker;
let publisher: MqttClient;

before(async () => {
  broker = await createBroker({ port: 0, stallTimeoutMs: STALL_MS });
  publisher = await mqtt.connectAsync(broker.url, { clientId: 'publisher', reconnectPeriod: 0 });
});

after(async () => {
  await publisher?.endAsync();
  await broker?.close();
});

/** A raw MQTT subscriber that reads only as fast as the test lets it: `budgetBytes` per 100 ms (0: nothing). */
async function rawSubscriber(
  clientId: string,
  budgetBytes: number,
  port = broker.port,
): Promise<{ socket: Socket; received: () => number; closed: () => boolean; stop: () => void }> {
  const socket = netConnect({ host: '127.0.0.1', port });
  let handshake = Buffer.alloc(0);
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.on('connect', () => socket.write(connectPacket(clientId, 'reader', 'x')));
    const onData = (d: Buffer) => {
      handshake = Buffer.concat([handshake, d]);
      if (handshake.length === 4) socket.write(subscribePacket(TOPIC, 0));
      // CONNACK (4 bytes) and SUBACK (5 bytes): subscribed.
      if (handshake.length >= 9) {
        socket.off('data', onData);
        socket.off('error', reject);
        resolve();
      }
    };
    socket.on('data', onData);
  });
  let received = 0;
  let windowBytes = 0;
  let closed = false;
  socket.on('close', () => (closed = true));
  socket.on('error', () => undefined);
  socket.on('data', (d: Buffer) => {
    received += d.length;
    windowBytes += d.length;
    if (budgetBytes > 0 && windowBytes >= budgetBytes) socket.pause();
  });
  if (budgetBytes === 0) socket.pause();
  const timer = setInterval(() => {
    windowBytes = 0;
    if (budgetBytes > 0) socket.resume();
  }, 100);
  return { socket, received: () => received, closed: () => closed, stop: () => (clearInterval(timer), socket.destroy()) };
}

async function publishAll(): Promise<void> {
  const payload = Buffer.alloc(MESSAGE_BYTES, 7);
  for (let i = 0; i < MESSAGES; i++) await publisher.publishAsync(TOPIC, payload, { qos: 0 });
}

const expectedBytes = MESSAGES * publishPacketBytes(TOPIC, MESSAGE_BYTES);

test('a subscriber that reads slowly through a backlog lasting several stall timeouts stays connected and gets everything', async () => {
  // 256 KiB per 100 ms, about 2.5 MB/s: 32 MiB take about 13 s, and more than 20 MiB wait in the
  // broker for about 8 s, well past STALL_MS. Aedes' own drain timeout (its buffer never empties
  // within the timeout) closed such a reader.
  const reader = await rawSubscriber('slow-reader', 256 * 1024);
  try {
    const started = performance.now();
    await publishAll();
    await waitFor('the slow reader to get every message', () => reader.received() >= expectedBytes || reader.closed(), 120_000);
    const tookMs = performance.now() - started;
    assert.equal(reader.closed(), false, 'the slow reader was disconnected');
    assert.equal(reader.received(), expectedBytes);
    assert.ok(tookMs > 2 * STALL_MS, `the backlog lasted ${Math.round(tookMs)} ms, more than two stall timeouts`);
    assert.equal(broker.stalledClosed(), 0);
  } finally {
    reader.stop();
  }
});

test('a subscriber that stops reading is closed after the stall timeout, and the broker serves the others', async () => {
  const before = broker.stalledClosed();
  const frozen = await rawSubscriber('frozen-reader', 0);
  const other = await mqtt.connectAsync(broker.url, { clientId: 'bystander', reconnectPeriod: 0 });
  try {
    await other.subscribeAsync('other/topic', { qos: 1 });
    const startedMs = performance.now();
    await publishAll();
    await waitFor('the broker to close the frozen reader', () => broker.stalledClosed() > before, 60_000);
    const closedAfterMs = performance.now() - startedMs;
    assert.ok(closedAfterMs >= STALL_MS, `closed after ${Math.round(closedAfterMs)} ms, before the stall timeout`);
    assert.equal(broker.stalledClosed(), before + 1);
    // A paused socket sees no end of stream: read what is left to find the close.
    frozen.socket.resume();
    await waitFor('the frozen reader to see its connection closed', () => frozen.closed(), 30_000);
    assert.ok(frozen.received() < expectedBytes, 'the frozen reader cannot have read everything');
    const got = new Promise<string>((resolve) => other.once('message', (_t, p) => resolve(p.toString())));
    await publisher.publishAsync('other/topic', 'still here', { qos: 1 });
    assert.equal(await got, 'still here');
  } finally {
    frozen.stop();
    await other.endAsync();
  }
});

test(
  'on a cluster node, deliveries to a slow reader stay bounded: written ones end when its socket drains instead of piling up',
  { skip: redisMissing(), timeout: 180_000 },
  async () => {
    // Everything started inside the try: a failure while starting must not leave Redis running.
    const redis = await startRedis(['--client-output-buffer-limit', 'pubsub', '0', '0', '0']);
    let a: RunningBroker | undefined;
    let b: RunningBroker | undefined;
    let sender: MqttClient | undefined;
    let reader: Awaited<ReturnType<typeof rawSubscriber>> | undefined;
    let sampler: NodeJS.Timeout | undefined;
    try {
      a = await createBroker({ port: 0, stallTimeoutMs: STALL_MS, cluster: { redisUrl: redis.url, nodeId: 'node-a' } });
      b = await createBroker({ port: 0, cluster: { redisUrl: redis.url, nodeId: 'node-b' } });
      sender = await mqtt.connectAsync(b.url, { clientId: 'sender', reconnectPeriod: 0 });
      reader = await rawSubscriber('cluster-reader', 256 * 1024, a.port);
      // mqemitter-redis' count of messages in delivery on node A.
      const emitter = a.aedes as unknown as { mq: { current: number } };
      let most = 0;
      sampler = setInterval(() => (most = Math.max(most, emitter.mq.current)), 10);
      // 400 messages of 64 KiB (25 MiB) through Redis to node A, faster than the reader reads.
      const payload = Buffer.alloc(64 * 1024, 3);
      const count = 400;
      for (let i = 0; i < count; i++) await sender.publishAsync(TOPIC, payload, { qos: 0 });
      const expected = count * publishPacketBytes(TOPIC, payload.length);
      const r = reader;
      await waitFor('the cluster reader to get every message', () => r.received() >= expected || r.closed(), 120_000);
      assert.equal(r.closed(), false);
      assert.equal(r.received(), expected);
      assert.ok(most <= CLUSTER_DELIVERY_CONCURRENCY, `${most} deliveries at once on node A (bound ${CLUSTER_DELIVERY_CONCURRENCY})`);
    } finally {
      clearInterval(sampler);
      reader?.stop();
      await sender?.endAsync();
      await b?.close();
      await a?.close();
      await redis.stop();
    }
  },
);
