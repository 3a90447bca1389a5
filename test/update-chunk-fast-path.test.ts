import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { SUPPORTED_VERSIONS, updateChunkFastPath, updateTopicMessageSchema } from '../shared/protocol/messages.js';
import { decodeMsgpack, packMsg } from '../shared/protocol/wire-codec.js';
import { FedlineError } from '../shared/protocol/errors.js';

/**
 * The aggregator checks update chunks by hand (updateChunkFastPath) instead of through the schema,
 * for speed. It must never accept what the schema refuses, nor hand on anything the schema would
 * not: on valid chunks, chunks with one field made wrong, and arbitrary values, its verdict and its
 * output are the schema's.
 */

const good = {
  v: 1,
  type: 'update-chunk',
  round: 3,
  agent: 'line-07',
  upload: 'u_1-x',
  seq: 0,
  total: 4,
  bundleBytes: 1000,
  chunkBytes: 256,
  crc32: 0xffffffff,
  data: new Uint8Array([1, 2, 3]),
};

/** Values a field may take: right ones, edge cases of every rule, and wrong types. */
const anyValue = fc.oneof(
  fc.constantFrom(0, -0, 1, -1, 0.5, 2 ** 22, 2 ** 22 + 1, 0xffffffff, 0x100000000, Number.MAX_SAFE_INTEGER, 2 ** 53, NaN, Infinity, -Infinity),
  fc.constantFrom('', 'a', '-a', '.a', 'a.b', 'a/b', 'a+b', 'x'.repeat(64), 'x'.repeat(65), 'update-chunk', 'update-done', '1'),
  fc.constantFrom(null, undefined, true, [], {}, new Uint8Array(0), Buffer.from('ab'), new Uint16Array(2), new ArrayBuffer(2), 1n),
  fc.integer({ min: -5, max: 2 ** 33 }),
  fc.double(),
  fc.string({ maxLength: 70 }),
);

function sameVerdict(raw: Record<string, unknown>): void {
  const fast = updateChunkFastPath(raw);
  const schema = updateTopicMessageSchema.safeParse(raw);
  const schemaChunk = schema.success && schema.data.type === 'update-chunk' ? schema.data : null;
  assert.deepEqual(fast, schemaChunk, `fast path and schema disagree on ${JSON.stringify(raw, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x))}`);
}

test('a valid chunk: the fast path returns what the schema returns (unknown keys dropped)', () => {
  // Execute
  const fast = updateChunkFastPath({ ...good, extra: 'dropped' });

  // Assert
  assert.deepEqual(fast, updateTopicMessageSchema.parse({ ...good, extra: 'dropped' }));
  assert.ok(fast && !('extra' in fast));
  assert.equal(fast?.data, good.data, 'the bytes are handed on, not copied');
});

test('one field changed to any value: the fast path and the schema agree', () => {
  fc.assert(
    fc.property(fc.constantFrom(...Object.keys(good)), anyValue, (key, value) => {
      sameVerdict({ ...good, [key]: value });
    }),
    { numRuns: 3000 },
  );
});

test('a field missing, or arbitrary records: the fast path and the schema agree', () => {
  for (const key of Object.keys(good)) {
    const raw: Record<string, unknown> = { ...good };
    delete raw[key];
    sameVerdict(raw);
  }
  fc.assert(
    fc.property(fc.dictionary(fc.constantFrom(...Object.keys(good)), anyValue), (raw) => sameVerdict({ ...good, ...raw })),
    { numRuns: 2000 },
  );
});

test('decodeMsgpack with the fast path: a bad chunk still gets the schema error naming the field', () => {
  // Execute / Assert
  const ctx = { topic: 'fl/x/round/3/update/line-07', what: 'update message' };
  assert.throws(
    () => decodeMsgpack(packMsg({ ...good, total: 0 }), updateTopicMessageSchema, SUPPORTED_VERSIONS, ctx, updateChunkFastPath),
    (err: unknown) => err instanceof FedlineError && err.code === 'FL_MSG_SCHEMA' && /total/.test(err.message),
  );
  const ok = decodeMsgpack(packMsg(good), updateTopicMessageSchema, SUPPORTED_VERSIONS, ctx, updateChunkFastPath);
  assert.deepEqual(ok, { ...good, data: Buffer.from(good.data) });
});
