/**
 * A small msgpack encoder that writes exactly the types docs/protocol.md promises, so that a peer
 * with any msgpack library (Python's msgpack, C's msgpack-c) reads what the docs say:
 *
 *   * an integer-valued number up to ±(2^53 - 1) is a msgpack int, in the smallest form
 *     (fixint, uint8..uint32, int8..int32, and uint64 / int64 beyond 32 bits: epoch-millisecond
 *     times are above 2^32 and stay integers);
 *   * a number under one of the float fields (FLOAT_FIELDS: a number, or each number of an
 *     array) is always a float64, also when it is whole (accuracy 1 is 1.0 on the wire);
 *     any other non-integer, NaN, ±Infinity, and integers beyond 2^53 are float64 too;
 *   * str (UTF-8), bin (Uint8Array, Buffer), array, map with string keys, nil, bool;
 *   * a map field whose value is `undefined` is left out (as JSON does); `undefined` in an
 *     array is nil. No extension types, no records, no timestamps.
 *
 * Anything else (a Map, a Date, a typed array other than Uint8Array, a bigint beyond 64 bits)
 * is a programming error and throws a TypeError.
 */

/**
 * The map keys whose numbers are floats in docs/protocol.md: `task.learningRate` and the eval
 * metrics' `loss`, `accuracy`, `balancedAccuracy`, `precision[]`, `recall[]` (eval reports and
 * the update bundle's `metricsBefore` / `metricsAfter`), and bn-stats' `mean[]` and `m2[]`. test/wire-strict checks the list against
 * the message schemas.
 */
export const FLOAT_FIELDS: ReadonlySet<string> = new Set([
  'learningRate',
  'proxMu',
  'loss',
  'accuracy',
  'balancedAccuracy',
  'precision',
  'recall',
  'mean',
  'm2',
]);

const TWO_32 = 0x1_0000_0000;

/** Messages are written here and copied out; a larger one gets a buffer of its own. */
const scratch: Buffer = Buffer.allocUnsafeSlow(64 * 1024);

class Writer {
  buf: Buffer;
  pos = 0;
  constructor(buf: Buffer) {
    this.buf = buf;
  }
  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafeSlow(Math.max(this.buf.length * 2, this.pos + n + 1024));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }
  byte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }
  float64(x: number): void {
    this.ensure(9);
    this.buf[this.pos] = 0xcb;
    this.buf.writeDoubleBE(x, this.pos + 1);
    this.pos += 9;
  }
  int(x: number): void {
    this.ensure(9);
    const b = this.buf;
    const p = this.pos;
    if (x >= 0) {
      if (x < 0x80) {
        b[p] = x;
        this.pos += 1;
      } else if (x < 0x100) {
        b[p] = 0xcc;
        b[p + 1] = x;
        this.pos += 2;
      } else if (x < 0x10000) {
        b[p] = 0xcd;
        b.writeUInt16BE(x, p + 1);
        this.pos += 3;
      } else if (x < TWO_32) {
        b[p] = 0xce;
        b.writeUInt32BE(x, p + 1);
        this.pos += 5;
      } else {
        b[p] = 0xcf;
        b.writeBigUInt64BE(BigInt(x), p + 1);
        this.pos += 9;
      }
    } else if (x >= -32) {
      b[p] = x & 0xff;
      this.pos += 1;
    } else if (x >= -0x80) {
      b[p] = 0xd0;
      b.writeInt8(x, p + 1);
      this.pos += 2;
    } else if (x >= -0x8000) {
      b[p] = 0xd1;
      b.writeInt16BE(x, p + 1);
      this.pos += 3;
    } else if (x >= -0x8000_0000) {
      b[p] = 0xd2;
      b.writeInt32BE(x, p + 1);
      this.pos += 5;
    } else {
      b[p] = 0xd3;
      b.writeBigInt64BE(BigInt(x), p + 1);
      this.pos += 9;
    }
  }
  bigint(x: bigint): void {
    this.ensure(9);
    if (x >= -(1n << 63n) && x < 1n << 63n) {
      this.buf[this.pos] = 0xd3;
      this.buf.writeBigInt64BE(x, this.pos + 1);
    } else if (x >= 0n && x < 1n << 64n) {
      this.buf[this.pos] = 0xcf;
      this.buf.writeBigUInt64BE(x, this.pos + 1);
    } else {
      throw new TypeError(`msgpack: bigint ${x} does not fit 64 bits`);
    }
    this.pos += 9;
  }
  /** A length-prefixed header: fix form (when `fixBase` and n < fixMax), 8-bit (when `code8`), 16-bit, 32-bit. */
  header(n: number, fixBase: number, fixMax: number, code8: number, code16: number, code32: number): void {
    this.ensure(5);
    const b = this.buf;
    if (n < fixMax) b[this.pos++] = fixBase | n;
    else if (code8 !== 0 && n < 0x100) {
      b[this.pos++] = code8;
      b[this.pos++] = n;
    } else if (n < 0x10000) {
      b[this.pos] = code16;
      b.writeUInt16BE(n, this.pos + 1);
      this.pos += 3;
    } else {
      b[this.pos] = code32;
      b.writeUInt32BE(n, this.pos + 1);
      this.pos += 5;
    }
  }
  str(s: string): void {
    if (s.length < 32 && this.ascii(s)) return;
    const n = Buffer.byteLength(s, 'utf8');
    this.header(n, 0xa0, 32, 0xd9, 0xda, 0xdb);
    this.ensure(n);
    this.pos += this.buf.write(s, this.pos, 'utf8');
  }
  /** A short ASCII string as a fixstr, written byte by byte (faster than Buffer.write for map keys); false when it is not ASCII. */
  ascii(s: string): boolean {
    const n = s.length;
    this.ensure(n + 1);
    const b = this.buf;
    const p = this.pos + 1;
    for (let i = 0; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) return false;
      b[p + i] = c;
    }
    b[this.pos] = 0xa0 | n;
    this.pos = p + n;
    return true;
  }
  bin(data: Uint8Array): void {
    const n = data.byteLength;
    this.header(n, 0, 0, 0xc4, 0xc5, 0xc6);
    this.ensure(n);
    this.buf.set(data, this.pos);
    this.pos += n;
  }
}

function isInteger(x: number): boolean {
  return Number.isInteger(x) && Math.abs(x) <= Number.MAX_SAFE_INTEGER;
}

function write(w: Writer, value: unknown, asFloat: boolean): void {
  switch (typeof value) {
    case 'number':
      if (!asFloat && isInteger(value)) w.int(value);
      else w.float64(value);
      return;
    case 'string':
      w.str(value);
      return;
    case 'boolean':
      w.byte(value ? 0xc3 : 0xc2);
      return;
    case 'bigint':
      w.bigint(value);
      return;
    case 'undefined':
      w.byte(0xc0);
      return;
    case 'object':
      if (value === null) w.byte(0xc0);
      else if (value instanceof Uint8Array) w.bin(value);
      else if (Array.isArray(value)) {
        w.header(value.length, 0x90, 16, 0, 0xdc, 0xdd);
        for (const item of value) write(w, item, asFloat);
      } else if (Object.getPrototypeOf(value) === Object.prototype || Object.getPrototypeOf(value) === null) writeMap(w, value as Record<string, unknown>);
      else throw new TypeError(`msgpack: cannot encode a ${(value as object).constructor?.name ?? 'object'}`);
      return;
    default:
      throw new TypeError(`msgpack: cannot encode a ${typeof value}`);
  }
}

function writeMap(w: Writer, map: Record<string, unknown>): void {
  const keys = Object.keys(map).filter((k) => map[k] !== undefined);
  w.header(keys.length, 0x80, 16, 0, 0xde, 0xdf);
  for (const k of keys) {
    w.str(k);
    write(w, map[k], FLOAT_FIELDS.has(k));
  }
}

/** Encode a value as standard msgpack (see the file comment for the type rules). */
export function writeMsgpack(value: unknown): Buffer {
  const w = new Writer(scratch);
  write(w, value, false);
  if (w.buf !== scratch) {
    // The message outgrew the scratch buffer: hand the grown buffer out as it is (no copy).
    return w.buf.subarray(0, w.pos);
  }
  const out = Buffer.allocUnsafe(w.pos);
  w.buf.copy(out, 0, 0, w.pos);
  return out;
}
