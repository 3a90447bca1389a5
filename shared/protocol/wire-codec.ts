import { C1, Unpackr } from 'msgpackr';
import { z } from 'zod';
import { ErrorCodes, FedlineError } from './errors.js';
import { writeMsgpack } from './msgpack-writer.js';

/**
 * The wire codec: protocol messages to and from bytes. msgpack for the round announcement, chunks,
 * updates and acks; JSON for what people and an MES read (status, manifest, events, commands); decoding
 * checks the protocol version and the message's schema, and every failure is a FedlineError
 * (FL_MSG_DECODE / FL_MSG_VERSION / FL_MSG_SCHEMA) naming the topic and the field.
 */

/**
 * Standard msgpack only (maps, arrays, bin, numbers, strings, nil, booleans): no msgpackr records,
 * no extension types, no timestamps, so that an agent or MES written in Python or C can decode
 * every message with any msgpack library (docs/protocol.md). Encoding: msgpack-writer.ts (integers
 * as ints also above 2^32, the documented float fields as float64 also when whole). Decoding is
 * lenient where another client may differ: an int where a float is documented is accepted (`1` for
 * 1.0), and so are int64 / uint64 and float32.
 */
const unpackr = new Unpackr({
  useRecords: false,
  moreTypes: false,
  mapsAsObjects: true,
  int64AsType: 'number',
});

export function packMsg(value: unknown): Buffer {
  return writeMsgpack(value);
}

export function unpackMsg(payload: Uint8Array): unknown {
  const value = unpackr.unpack(payload);
  // 0xc1 is "never used" in the msgpack spec; msgpackr returns a marker object for it.
  if (value === C1) throw new FedlineError(ErrorCodes.MSG_DECODE, 'byte 0xc1 is not valid msgpack');
  return value;
}

export function formatIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => `${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
}

export interface DecodeContext {
  topic: string;
  /** What the topic says the message is, e.g. `update chunk`; used in error text. */
  what: string;
}

/**
 * Decode a msgpack payload and validate it against a versioned schema. Every failure is a
 * FedlineError naming the topic and the failing field, ready to be logged and counted.
 */
export function decodeMsgpack<T>(
  payload: Uint8Array,
  schema: z.ZodType<T>,
  versions: readonly number[],
  ctx: DecodeContext,
  /** The schema's rules for the most frequent message, by hand (null: not that message, or a rule fails; the schema decides). */
  fastPath?: (raw: Record<string, unknown>) => T | null,
): T {
  let raw: unknown;
  try {
    raw = unpackMsg(payload);
  } catch (err) {
    throw new FedlineError(ErrorCodes.MSG_DECODE, `${ctx.what} on ${ctx.topic} is not valid msgpack: ${(err as Error).message}`, {
      topic: ctx.topic,
      bytes: payload.byteLength,
    });
  }
  return validateMessage(raw, schema, versions, ctx, fastPath);
}

export function decodeJson<T>(payload: Uint8Array, schema: z.ZodType<T>, versions: readonly number[], ctx: DecodeContext): T {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8'));
  } catch (err) {
    throw new FedlineError(ErrorCodes.MSG_DECODE, `${ctx.what} on ${ctx.topic} is not valid JSON: ${(err as Error).message}`, {
      topic: ctx.topic,
      bytes: payload.byteLength,
    });
  }
  return validateMessage(raw, schema, versions, ctx);
}

function validateMessage<T>(
  raw: unknown,
  schema: z.ZodType<T>,
  versions: readonly number[],
  ctx: DecodeContext,
  fastPath?: (raw: Record<string, unknown>) => T | null,
): T {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw) || Object.getPrototypeOf(raw) !== Object.prototype) {
    throw new FedlineError(ErrorCodes.MSG_SCHEMA, `${ctx.what} on ${ctx.topic} must be a map, got ${Array.isArray(raw) ? 'array' : typeof raw}`, {
      topic: ctx.topic,
    });
  }
  const v = (raw as { v?: unknown }).v;
  if (typeof v !== 'number' || !versions.includes(v)) {
    throw new FedlineError(
      ErrorCodes.MSG_VERSION,
      `${ctx.what} on ${ctx.topic} has protocol version ${JSON.stringify(v)}; this build understands ${versions.join(', ')}`,
      { topic: ctx.topic, version: v },
    );
  }
  const fast = fastPath?.(raw as Record<string, unknown>);
  if (fast) return fast;
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new FedlineError(ErrorCodes.MSG_SCHEMA, `${ctx.what} on ${ctx.topic} is malformed: ${formatIssues(parsed.error)}`, {
      topic: ctx.topic,
    });
  }
  return parsed.data;
}

export function encodeJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}
