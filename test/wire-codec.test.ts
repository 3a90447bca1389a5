import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeJson, decodeMsgpack, encodeJson, packMsg } from '../shared/protocol/wire-codec.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import {
  ackSchema,
  agentStatusSchema,
  modelChunkSchema,
  roundAnnouncementSchema,
  SUPPORTED_VERSIONS,
  updateTopicMessageSchema,
  type AckMsg,
  type EvalMetrics,
  type RoundAnnouncement,
} from '../shared/protocol/messages.js';
import { strictUnpack } from './strict-msgpack.js';

const SHA = 'a'.repeat(64);
const metrics: EvalMetrics = {
  samples: 4,
  loss: 0.5,
  accuracy: 0.75,
  balancedAccuracy: 0.5,
  confusion: [
    [2, 1],
    [0, 1],
  ],
  precision: [1, 0.5],
  recall: [2 / 3, 1],
};
const announcement: RoundAnnouncement = {
  v: 1,
  type: 'round',
  federation: 'usb',
  runId: '3f9a0c2e7b14d568',
  round: 3,
  state: 'open',
  kind: 'train',
  base: { version: 2, sha256: SHA, bytes: 1000, chunks: 4, chunkBytes: 256, signature: null },
  task: { epochs: 2, batchSize: 16, learningRate: 0.004, optimizer: 'adam', classWeighting: 'auto', federated: 'all' },
  classes: ['OKAY', 'NOT_OKAY'],
  selected: ['site-a', 'site-b'],
  minClients: 2,
  deadlineAt: 1_800_000_000_000,
  chunkBytes: 262144,
  encoding: 'q8',
  delta: true,
  windowChunks: 64,
  issuedAt: 1_799_999_000_000,
};
const ctx = { topic: 'fl/usb/round', what: 'test message' };

test('every msgpack message round-trips and is plain standard msgpack', () => {
  const messages = [
    [announcement, roundAnnouncementSchema],
    [
      {
        v: 1,
        type: 'model-chunk',
        version: 2,
        seq: 1,
        total: 4,
        bundleBytes: 1000,
        chunkBytes: 256,
        sha256: SHA,
        crc32: 0xdeadbeef,
        data: Buffer.from([1, 2, 3]),
      },
      modelChunkSchema,
    ],
    [
      {
        v: 1,
        type: 'update-chunk',
        round: 3,
        agent: 'site-a',
        upload: 'c0ffee',
        seq: 0,
        total: 1,
        bundleBytes: 3,
        chunkBytes: 256,
        crc32: 7,
        data: Buffer.from([9, 8, 7]),
      },
      updateTopicMessageSchema,
    ],
    [{ v: 1, type: 'update-done', round: 3, agent: 'site-a', upload: 'c0ffee', total: 1, bundleBytes: 3, sha256: SHA }, updateTopicMessageSchema],
    [{ v: 1, type: 'eval', round: 3, agent: 'site-a', baseVersion: 2, metrics, downloadedBytes: 1000 }, updateTopicMessageSchema],
    [
      {
        v: 1,
        type: 'ack',
        round: 3,
        agent: 'site-a',
        status: 'incomplete',
        upload: 'c0ffee',
        sha256: SHA,
        code: null,
        reason: null,
        missing: [1, 3],
        stored: 0,
        window: 0,
      } satisfies AckMsg,
      ackSchema,
    ],
    [
      {
        v: 1,
        type: 'ack',
        round: 3,
        agent: 'site-a',
        status: 'progress',
        upload: 'c0ffee',
        sha256: null,
        code: null,
        reason: null,
        missing: [],
        stored: 48,
        window: 32,
      } satisfies AckMsg,
      ackSchema,
    ],
  ] as const;
  for (const [msg, schema] of messages) {
    const bytes = packMsg(msg);
    // An independent, strict decoder reads it: no extension types, no msgpackr records.
    const plain = strictUnpack(bytes) as Record<string, unknown>;
    assert.equal(plain.type, msg.type);
    const decoded = decodeMsgpack(bytes, schema as never, SUPPORTED_VERSIONS, ctx) as Record<string, unknown>;
    assert.deepEqual(
      JSON.parse(JSON.stringify(decoded, (_k, v) => (v && v.type === 'Buffer' ? v.data : v instanceof Uint8Array ? [...v] : v))),
      JSON.parse(JSON.stringify(msg, (_k, v) => (v && v.type === 'Buffer' ? v.data : v instanceof Uint8Array ? [...v] : v))),
    );
  }
});

test('garbage, truncated msgpack and non-maps are refused with FL_MSG_DECODE / FL_MSG_SCHEMA naming the topic', () => {
  const full = packMsg(announcement);
  const cases: [Uint8Array, string][] = [
    [Buffer.from([0xc1]), ErrorCodes.MSG_DECODE], // 0xc1 is "never used" in the spec
    [full.subarray(0, full.length - 5), ErrorCodes.MSG_DECODE],
    [packMsg([1, 2, 3]), ErrorCodes.MSG_SCHEMA],
    [packMsg('hello'), ErrorCodes.MSG_SCHEMA],
  ];
  for (const [bytes, code] of cases) {
    assert.throws(
      () => decodeMsgpack(bytes, roundAnnouncementSchema, SUPPORTED_VERSIONS, ctx),
      (err: unknown) => err instanceof FedlineError && err.code === code && err.message.includes('fl/usb/round'),
    );
  }
});

test('an unknown protocol version is rejected with its number in the reason', () => {
  assert.throws(
    () => decodeMsgpack(packMsg({ ...announcement, v: 7 }), roundAnnouncementSchema, SUPPORTED_VERSIONS, ctx),
    (err: unknown) => err instanceof FedlineError && err.code === ErrorCodes.MSG_VERSION && /version 7/.test(err.message),
  );
});

test('schema errors name the failing field', () => {
  const bad = { ...announcement, task: { ...announcement.task, epochs: -1 } };
  assert.throws(
    () => decodeMsgpack(packMsg(bad), roundAnnouncementSchema, SUPPORTED_VERSIONS, ctx),
    (err: unknown) => err instanceof FedlineError && err.code === ErrorCodes.MSG_SCHEMA && err.message.includes('task.epochs'),
  );
  const nan = { ...announcement, task: { ...announcement.task, learningRate: Number.NaN } };
  assert.throws(() => decodeMsgpack(packMsg(nan), roundAnnouncementSchema, SUPPORTED_VERSIONS, ctx), /task\.learningRate/);
  const badAgent = { ...announcement, selected: ['ok', 'bad/agent'] };
  assert.throws(() => decodeMsgpack(packMsg(badAgent), roundAnnouncementSchema, SUPPORTED_VERSIONS, ctx), /selected\.1/);
});

test('JSON status round-trips and invalid JSON is refused', () => {
  const status = {
    v: 1,
    agent: 'site-a',
    state: 'training',
    round: 2,
    progress: 0.5,
    detail: 'epoch 1/2',
    backend: 'cpu',
    samples: { train: 10, test: 3 },
    ts: 5,
  } as const;
  assert.deepEqual(decodeJson(encodeJson(status), agentStatusSchema, SUPPORTED_VERSIONS, ctx), status);
  assert.throws(
    () => decodeJson(Buffer.from('{"v":1,'), agentStatusSchema, SUPPORTED_VERSIONS, ctx),
    (e: unknown) => (e as FedlineError).code === ErrorCodes.MSG_DECODE,
  );
  assert.throws(() => decodeJson(encodeJson({ ...status, state: 'dancing' }), agentStatusSchema, SUPPORTED_VERSIONS, ctx), /state/);
});
