import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import mqttPacket from 'mqtt-packet';
import { MqttFrameError, MqttFrameReader, readPublish } from '../shared/transport/mqtt-frames.js';

// Packets are made by mqtt-packet (the encoder MQTT.js uses), so the framing is checked against an
// independent implementation of MQTT 3.1.1.
const V4 = { protocolVersion: 4 } as const;

type Spec = { kind: 'publish'; topic: string; size: number; qos: 0 | 1; retain: boolean; id: number } | { kind: 'pingresp' } | { kind: 'suback'; id: number };

function encode(spec: Spec, seed: number): Buffer {
  if (spec.kind === 'pingresp') return mqttPacket.generate({ cmd: 'pingresp' }, V4);
  if (spec.kind === 'suback') return mqttPacket.generate({ cmd: 'suback', messageId: spec.id, granted: [1] }, V4);
  const payload = Buffer.alloc(spec.size);
  for (let i = 0; i < spec.size; i++) payload[i] = (i * 31 + seed) & 0xff;
  return mqttPacket.generate(
    { cmd: 'publish', topic: spec.topic, payload, qos: spec.qos, retain: spec.retain, dup: false, ...(spec.qos > 0 ? { messageId: spec.id } : {}) },
    V4,
  );
}

/** Feed `stream` in pieces through one reused read buffer, scribbled after every push (as a socket's onread buffer is overwritten by the next read). */
function feed(reader: MqttFrameReader, stream: Buffer, cuts: number[], readBytes: number): void {
  const scratch = Buffer.alloc(readBytes);
  let at = 0;
  let i = 0;
  while (at < stream.byteLength) {
    const n = Math.min(readBytes, stream.byteLength - at, Math.max(1, cuts[i++ % cuts.length]!));
    stream.copy(scratch, 0, at, at + n);
    reader.push(scratch.subarray(0, n));
    scratch.fill(0xee);
    at += n;
  }
}

const specArb: fc.Arbitrary<Spec> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('publish' as const),
      topic: fc.stringMatching(/^[a-z0-9/é]{1,40}$/),
      // Around the 1-, 2- and 3-byte length boundaries (127, 16383) and beyond one read.
      size: fc.oneof(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 16_000, max: 16_500 }), fc.integer({ min: 60_000, max: 300_000 })),
      qos: fc.constantFrom(0 as const, 1 as const),
      retain: fc.boolean(),
      id: fc.integer({ min: 1, max: 65_535 }),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'pingresp' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('suback' as const), id: fc.integer({ min: 1, max: 65_535 }) }) },
);

test('property: packets cut at any read boundaries come out whole, in order, byte for byte', () => {
  fc.assert(
    fc.property(
      fc.array(specArb, { minLength: 1, maxLength: 12 }),
      fc.array(fc.integer({ min: 1, max: 70_000 }), { minLength: 1, maxLength: 8 }),
      fc.constantFrom(7, 1024, 65_536),
      fc.integer({ min: 0, max: 1 << 20 }),
      (specs, cuts, readBytes, reuseLimit) => {
        const packets = specs.map((s, i) => encode(s, i));
        const got: { bytes: Buffer; owned: boolean }[] = [];
        const reader = new MqttFrameReader((p, owned) => got.push({ bytes: Buffer.from(p), owned }), reuseLimit, 1024);
        feed(reader, Buffer.concat(packets), cuts, readBytes);
        assert.equal(got.length, packets.length);
        for (let i = 0; i < packets.length; i++) {
          assert.ok(got[i]!.bytes.equals(packets[i]!), `packet ${i} differs`);
          // Only packets above the reuse limit get a buffer of their own.
          if (got[i]!.owned) assert.ok(packets[i]!.byteLength > reuseLimit);
        }
        assert.ok(reader.assemblyBytes <= Math.max(1024, reuseLimit));
      },
    ),
    { numRuns: 150 },
  );
});

test('readPublish reads what mqtt-packet wrote; other packets are not PUBLISHes', () => {
  fc.assert(
    fc.property(specArb, (spec) => {
      const packet = encode(spec, 3);
      const p = readPublish(packet);
      if (spec.kind !== 'publish') {
        assert.equal(p, null);
        return;
      }
      const parsed = mqttPacket.parser(V4);
      let reference: mqttPacket.IPublishPacket | null = null;
      parsed.on('packet', (pk) => (reference = pk as mqttPacket.IPublishPacket));
      parsed.parse(packet);
      const ref = reference as unknown as mqttPacket.IPublishPacket;
      assert.ok(p);
      assert.equal(p.topic, ref.topic);
      assert.equal(p.qos, ref.qos);
      assert.equal(p.retain, ref.retain);
      assert.equal(p.packetId, spec.qos > 0 ? ref.messageId : null);
      assert.ok(Buffer.from(ref.payload as Buffer).equals(p.payload));
    }),
    { numRuns: 200 },
  );
});

test('a packet whole inside one read is handed on as a view of that read, without a copy', () => {
  const packet = encode({ kind: 'publish', topic: 'a/b', size: 500, qos: 1, retain: false, id: 7 }, 1);
  const read = Buffer.concat([packet, packet]);
  const views: Buffer[] = [];
  new MqttFrameReader((p) => views.push(p)).push(read);
  assert.equal(views.length, 2);
  assert.equal(views[0]!.buffer, read.buffer);
  assert.equal(views[1]!.byteOffset, read.byteOffset + packet.byteLength);
});

test('a length field longer than four bytes is a framing error', () => {
  const reader = new MqttFrameReader(() => assert.fail('no packet expected'));
  assert.throws(() => reader.push(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])), MqttFrameError);
  // Split across reads, byte by byte, the same.
  const split = new MqttFrameReader(() => assert.fail('no packet expected'));
  assert.throws(() => {
    for (const b of [0x30, 0x80, 0x80, 0x80, 0x80, 0x01]) split.push(Buffer.from([b]));
  }, MqttFrameError);
});
