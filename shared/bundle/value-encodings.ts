/**
 * Value encodings for smaller updates (f32, f16, q8): pure functions on typed arrays (no I/O, no tfjs).
 *
 *   f32  IEEE-754 binary32, little-endian: 4 bytes per value, exact.
 *   f16  IEEE-754 binary16 (half precision), round to nearest even: 2 bytes per value.
 *        Finite values beyond the largest half (±65504) saturate to ±65504; NaN and ±Infinity stay
 *        NaN and ±Infinity (so the aggregator's finite check still catches them).
 *        Error: |x - dec(enc(x))| <= max(|x| * 2^-11, 2^-25) for |x| <= 65504.
 *   q8   blockwise 8-bit: the values are cut into blocks of `block` values (the last one may be
 *        shorter); each block is stored as its scale s = max|x| / 127 (float32, little-endian)
 *        followed by one int8 q = round(x * (1 / s)) per value (binary64 arithmetic, ties towards
 *        +infinity as Math.round, clamped to ±127; an all-zero block has s = 0 and q = 0); decoded
 *        x' = q * s. docs/protocol.md states the rules bit-exactly; test/wire-vectors checks them.
 *        Error: |x - x'| <= s / 2 (+ float32 rounding of the product), i.e. max|x|_block / 254.
 *        A NaN or ±Infinity makes the block's scale non-finite, which the finite check catches.
 *
 * The wire names (`f32`, `f16`, `q8`) are the round announcement's `encoding`; inside a tensor
 * bundle the same encodings are the tensor dtypes `float32`, `float16` and `q8`.
 */

export const updateEncodings = ['f32', 'f16', 'q8'] as const;
export type UpdateEncoding = (typeof updateEncodings)[number];

export const valueDtypes = ['float32', 'float16', 'q8'] as const;
export type ValueDtype = (typeof valueDtypes)[number];

/** Values per q8 block. 256 keeps the scale overhead at 1.6% (4 bytes per 256) and the error local. */
export const DEFAULT_Q8_BLOCK = 256;
export const MAX_Q8_BLOCK = 65_536;

export function dtypeOf(encoding: UpdateEncoding): ValueDtype {
  return encoding === 'f32' ? 'float32' : encoding === 'f16' ? 'float16' : 'q8';
}

/** Bytes that `count` values take in a dtype. */
export function encodedBytes(dtype: ValueDtype, count: number, block = DEFAULT_Q8_BLOCK): number {
  if (dtype === 'float32') return count * 4;
  if (dtype === 'float16') return count * 2;
  return count + 4 * Math.ceil(count / block);
}

/**
 * How a dtype is cut into independently encodable units: `unitValues` values take `unitBytes`
 * bytes (the last unit of a tensor may be shorter). Encoding or decoding any byte range only
 * needs the units it touches.
 */
export function unitOf(dtype: ValueDtype, block = DEFAULT_Q8_BLOCK): { unitValues: number; unitBytes: number } {
  if (dtype === 'float32') return { unitValues: 1, unitBytes: 4 };
  if (dtype === 'float16') return { unitValues: 1, unitBytes: 2 };
  return { unitValues: block, unitBytes: block + 4 };
}

// ---------------------------------------------------------------------------- f16

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Round a float32 (given by its bits) to the nearest binary16, ties to even; finite overflow saturates. */
function halfFromFloatBits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0); // ±Infinity, NaN (quiet)
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 31) return sign | 0x7bff; // beyond ±65504: saturate
  if (e <= 0) {
    // binary16 subnormal (or zero): value = m * 2^-24
    if (e < -10) return sign; // below half of the smallest subnormal: rounds to zero
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) !== 0)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++; // may carry into the exponent: still right
  if (h >= 0x7c00) return sign | 0x7bff; // rounded up past 65504: saturate
  return sign | h;
}

/** float32 -> binary16 bits. `out` must hold `values.length` entries. */
export function encodeF16(values: Float32Array, out: Uint16Array): void {
  const n = values.length;
  if (out.length < n) throw new RangeError(`f16 output of ${out.length} is shorter than ${n} values`);
  // Aligned input: read the bits through a Uint32Array view (no per-value scratch round trip).
  if (values.byteOffset % 4 === 0) {
    const bits = new Uint32Array(values.buffer, values.byteOffset, n);
    for (let i = 0; i < n; i++) out[i] = halfFromFloatBits(bits[i]!);
    return;
  }
  for (let i = 0; i < n; i++) {
    f32Scratch[0] = values[i]!;
    out[i] = halfFromFloatBits(u32Scratch[0]!);
  }
}

let halfTable: Float32Array | null = null;

/** All 65536 binary16 values as float32 (256 KiB, built once): decoding is one lookup per value. */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    let v: number;
    if (exp === 0) v = mant * 2 ** -24;
    else if (exp === 31) v = mant === 0 ? Number.POSITIVE_INFINITY : Number.NaN;
    else v = (1 + mant / 1024) * 2 ** (exp - 15);
    table[h] = sign * v;
  }
  halfTable = table;
  return table;
}

/** binary16 bits -> float32 (exact). */
export function decodeF16(halves: Uint16Array, out: Float32Array): void {
  const table = halfToFloatTable();
  const n = halves.length;
  if (out.length < n) throw new RangeError(`f32 output of ${out.length} is shorter than ${n} values`);
  for (let i = 0; i < n; i++) out[i] = table[halves[i]!]!;
}

/** True when no binary16 value is NaN or ±Infinity (exponent bits all ones). */
export function allFiniteF16(halves: Uint16Array): boolean {
  for (let i = 0; i < halves.length; i++) if ((halves[i]! & 0x7c00) === 0x7c00) return false;
  return true;
}

// ---------------------------------------------------------------------------- q8

/**
 * Encode `values` (a whole number of blocks, except that the last block may be shorter) into
 * `out`: per block, the float32 scale then one int8 per value. Returns the bytes written.
 */
export function encodeQ8(values: Float32Array, block: number, out: Uint8Array): number {
  const n = values.length;
  const need = encodedBytes('q8', n, block);
  if (out.length < need) throw new RangeError(`q8 output of ${out.length} bytes is shorter than ${need}`);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const q = new Int8Array(out.buffer, out.byteOffset, out.byteLength);
  let pos = 0;
  for (let start = 0; start < n; start += block) {
    const end = Math.min(n, start + block);
    let maxAbs = 0;
    let bad = false;
    for (let i = start; i < end; i++) {
      const v = values[i]!;
      if (v - v !== 0) bad = true; // NaN or ±Infinity
      const a = v < 0 ? -v : v;
      if (a > maxAbs) maxAbs = a;
    }
    const scale = bad ? Number.NaN : Math.fround(maxAbs / 127);
    view.setFloat32(pos, scale, true);
    pos += 4;
    if (bad || scale === 0) {
      q.fill(0, pos, pos + (end - start));
    } else {
      const inv = 1 / scale;
      for (let i = start; i < end; i++) {
        let r = Math.round(values[i]! * inv);
        // |x| / s <= 127 up to rounding of s; clamp the rare 128.
        if (r > 127) r = 127;
        else if (r < -127) r = -127;
        q[pos + i - start] = r;
      }
    }
    pos += end - start;
  }
  return pos;
}

/** Decode `count` values from q8 bytes (starting at a block boundary) into `out`. */
export function decodeQ8(bytes: Uint8Array, count: number, block: number, out: Float32Array): void {
  const need = encodedBytes('q8', count, block);
  if (bytes.length < need) throw new RangeError(`q8 input of ${bytes.length} bytes is shorter than ${need}`);
  if (out.length < count) throw new RangeError(`f32 output of ${out.length} is shorter than ${count} values`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const q = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  for (let start = 0; start < count; start += block) {
    const end = Math.min(count, start + block);
    const scale = view.getFloat32(pos, true);
    pos += 4;
    for (let i = start; i < end; i++) out[i] = q[pos + i - start]! * scale;
    pos += end - start;
  }
}

/** True when every block scale in q8 bytes for `count` values is finite. */
export function allFiniteQ8(bytes: Uint8Array, count: number, block: number): boolean {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  for (let start = 0; start < count; start += block) {
    const s = view.getFloat32(pos, true);
    if (s - s !== 0) return false;
    pos += 4 + Math.min(block, count - start);
  }
  return true;
}

// ---------------------------------------------------------------------------- generic

/** Encode values into a dtype's bytes (`values` starts at a unit boundary). Returns bytes written. */
export function encodeValues(dtype: ValueDtype, values: Float32Array, out: Uint8Array, block = DEFAULT_Q8_BLOCK): number {
  if (dtype === 'float32') {
    const src = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    out.set(src);
    return src.byteLength;
  }
  if (dtype === 'float16') {
    if (out.byteOffset % 2 === 0) {
      encodeF16(values, new Uint16Array(out.buffer, out.byteOffset, values.length));
    } else {
      const tmp = new Uint16Array(values.length);
      encodeF16(values, tmp);
      out.set(new Uint8Array(tmp.buffer));
    }
    return values.length * 2;
  }
  return encodeQ8(values, block, out);
}

/** Decode `count` values of a dtype (bytes start at a unit boundary) into `out` as float32. */
export function decodeValues(dtype: ValueDtype, bytes: Uint8Array, count: number, out: Float32Array, block = DEFAULT_Q8_BLOCK): void {
  if (dtype === 'float32') {
    new Uint8Array(out.buffer, out.byteOffset, count * 4).set(bytes.subarray(0, count * 4));
    return;
  }
  if (dtype === 'float16') {
    const halves =
      bytes.byteOffset % 2 === 0
        ? new Uint16Array(bytes.buffer, bytes.byteOffset, count)
        : new Uint16Array(Uint8Array.from(bytes.subarray(0, count * 2)).buffer);
    decodeF16(halves, out);
    return;
  }
  decodeQ8(bytes, count, block, out);
}
