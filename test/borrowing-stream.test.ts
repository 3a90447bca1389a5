import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import type { InboundMessage } from '../shared/transport/transport.js';
import { captureLogger, startAedes, waitFor } from './helpers.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function payload(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 131 + seed * 7) & 0xff;
  return b;
}

test('MqttTransport on Aedes: borrowed subscriptions get views of one reused receive buffer, everything else owned copies; QoS 1 is acknowledged', async () => {
  const broker = await startAedes();
  const { logger } = captureLogger('warn');
  const sub = await MqttTransport.connect({ url: broker.url, clientId: 'receiver', logger });
  const pub = await MqttTransport.connect({ url: broker.url, clientId: 'sender', logger });
  try {
    let acks = 0;
    broker.aedes.on('ack', (_packet, client) => {
      if (client?.id === 'receiver') acks++;
    });
    // Borrowed: checked inside the handler (the bytes are valid only there), and the buffer noted.
    const borrowed: { topic: string; sha: string; buffer: ArrayBufferLike; retain: boolean }[] = [];
    const onBorrowed = (m: InboundMessage) => borrowed.push({ topic: m.topic, sha: sha(m.payload), buffer: m.payload.buffer, retain: m.retain });
    // Kept: a plain handler on the same filter keeps the payloads and checks them at the end.
    const kept: InboundMessage[] = [];
    const keptOther: InboundMessage[] = [];
    await sub.subscribe('t/big/#', onBorrowed, { borrowed: true });
    await sub.subscribe('t/big/#', (m) => kept.push(m));
    await sub.subscribe('t/other/#', (m) => keptOther.push(m));

    // 300 KiB spans several socket reads; 40 KiB and 100 B can sit inside one.
    const sizes = [300 * 1024, 40 * 1024, 100, 300 * 1024, 0, 300 * 1024, 17_000, 300 * 1024];
    const sent = sizes.map((size, i) => ({ topic: `t/big/${i}`, bytes: payload(size, i), qos: (i % 3 === 2 ? 0 : 1) as 0 | 1 }));
    const others = sizes.map((size, i) => ({ topic: `t/other/${i}`, bytes: payload(Math.min(size, 50_000), 100 + i) }));
    for (let i = 0; i < sent.length; i++) {
      await Promise.all([pub.publish(sent[i]!.topic, sent[i]!.bytes, { qos: sent[i]!.qos }), pub.publish(others[i]!.topic, others[i]!.bytes)]);
    }
    await waitFor('every message', () => borrowed.length === sent.length && kept.length === sent.length && keptOther.length === others.length, 20_000);

    assert.deepEqual(
      borrowed.map((b) => [b.topic, b.sha, b.retain]),
      sent.map((s) => [s.topic, sha(s.bytes), false]),
    );
    // The kept copies are intact although the borrowed views were overwritten by later packets.
    assert.deepEqual(
      kept.map((m) => [m.topic, sha(m.payload)]),
      sent.map((s) => [s.topic, sha(s.bytes)]),
    );
    assert.deepEqual(
      keptOther.map((m) => [m.topic, sha(m.payload)]),
      others.map((s) => [s.topic, sha(s.bytes)]),
    );
    // The packets larger than one read were gathered in the same reused buffer.
    const large = borrowed.filter((_, i) => sizes[i]! > 64 * 1024);
    assert.equal(new Set(large.map((b) => b.buffer)).size, 1, 'one assembly buffer for every large packet');
    assert.ok(!kept.some((m) => m.payload.buffer === large[0]!.buffer), 'kept payloads are not views of it');
    // Every QoS 1 delivery to the receiver was acknowledged (by the fast lane for t/big, by MQTT.js for t/other).
    const qos1 = sent.filter((s) => s.qos === 1).length + others.length;
    await waitFor('PUBACKs', () => acks === qos1, 5000);

    // A retained message on a borrowed topic, delivered at subscription, says it is retained.
    await pub.publish('t/ret/x', payload(100_000, 9), { retain: true });
    const retained: { sha: string; retain: boolean }[] = [];
    await sub.subscribe('t/ret/#', (m) => retained.push({ sha: sha(m.payload), retain: m.retain }), { borrowed: true });
    await waitFor('retained', () => retained.length === 1, 5000);
    assert.deepEqual(retained, [{ sha: sha(payload(100_000, 9)), retain: true }]);
  } finally {
    await sub.close();
    await pub.close();
    await broker.close();
  }
});

test('MqttTransport: a handler that throws on a borrowed message is logged, and the connection carries on', async () => {
  const broker = await startAedes();
  const { logger, lines } = captureLogger('warn');
  const sub = await MqttTransport.connect({ url: broker.url, clientId: 'receiver', logger });
  const pub = await MqttTransport.connect({ url: broker.url, clientId: 'sender', logger });
  try {
    const got: number[] = [];
    await sub.subscribe(
      't/#',
      (m) => {
        if (m.payload[0] === 1) throw new Error('handler bug');
        got.push(m.payload[0]!);
      },
      { borrowed: true },
    );
    for (const b of [0, 1, 2]) await pub.publish('t/x', Buffer.from([b, ...payload(80_000, b)]));
    await waitFor('two messages', () => got.length === 2, 5000);
    assert.deepEqual(got, [0, 2]);
    assert.ok(lines.some((l) => l.msg === 'message handler failed' && l.topic === 't/x'));
    assert.ok(sub.connected);
  } finally {
    await sub.close();
    await pub.close();
    await broker.close();
  }
});
