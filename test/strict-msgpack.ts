/**
 * A deliberately small, independent msgpack decoder (spec: github.com/msgpack/msgpack/blob/master/spec.md)
 * that accepts only the standard types fedline promises (nil, bool, int, float, str, bin, array,
 * map) and throws on extension types. Tests decode fedline's messages with it to prove that a
 * Python or C peer with any msgpack library can read them.
 */
/** A msgpack float as `strictUnpack(buf, { tagFloats: true })` returns it: which width, and its value. */
export class WireFloat {
  constructor(
    readonly value: number,
    readonly bits: 32 | 64,
  ) {}
}

/**
 * Decode one msgpack value. With `tagFloats`, floats come back as WireFloat and integers as plain
 * numbers, so a test can tell `1` from `1.0` (a msgpack library in Python or C does).
 */
export function strictUnpack(buf: Uint8Array, options: { tagFloats?: boolean } = {}): unknown {
  const float = (value: number, bits: 32 | 64) => (options.tagFloats ? new WireFloat(value, bits) : value);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = 0;
  const str = (n: number) => {
    const s = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(pos, pos + n));
    pos += n;
    return s;
  };
  const bin = (n: number) => {
    const b = buf.slice(pos, pos + n);
    pos += n;
    return b;
  };
  const arr = (n: number): unknown[] => Array.from({ length: n }, () => read());
  const map = (n: number): Record<string, unknown> => {
    const o: Record<string, unknown> = {};
    for (let i = 0; i < n; i++) {
      const k = read();
      if (typeof k !== 'string') throw new Error(`map key of type ${typeof k} at ${pos}`);
      o[k] = read();
    }
    return o;
  };
  function read(): unknown {
    if (pos >= buf.length) throw new Error('truncated');
    const t = buf[pos++]!;
    if (t <= 0x7f) return t;
    if (t >= 0x80 && t <= 0x8f) return map(t & 0x0f);
    if (t >= 0x90 && t <= 0x9f) return arr(t & 0x0f);
    if (t >= 0xa0 && t <= 0xbf) return str(t & 0x1f);
    if (t >= 0xe0) return t - 0x100;
    const u8 = () => view.getUint8((pos += 1) - 1);
    const u16 = () => view.getUint16((pos += 2) - 2);
    const u32 = () => view.getUint32((pos += 4) - 4);
    switch (t) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return bin(u8());
      case 0xc5:
        return bin(u16());
      case 0xc6:
        return bin(u32());
      case 0xca:
        return float(view.getFloat32((pos += 4) - 4), 32);
      case 0xcb:
        return float(view.getFloat64((pos += 8) - 8), 64);
      case 0xcc:
        return u8();
      case 0xcd:
        return u16();
      case 0xce:
        return u32();
      case 0xcf:
        return Number(view.getBigUint64((pos += 8) - 8));
      case 0xd0:
        return view.getInt8((pos += 1) - 1);
      case 0xd1:
        return view.getInt16((pos += 2) - 2);
      case 0xd2:
        return view.getInt32((pos += 4) - 4);
      case 0xd3:
        return Number(view.getBigInt64((pos += 8) - 8));
      case 0xd9:
        return str(u8());
      case 0xda:
        return str(u16());
      case 0xdb:
        return str(u32());
      case 0xdc:
        return arr(u16());
      case 0xdd:
        return arr(u32());
      case 0xde:
        return map(u16());
      case 0xdf:
        return map(u32());
      default:
        throw new Error(`non-standard or extension type 0x${t.toString(16)} at byte ${pos - 1}`);
    }
  }
  const value = read();
  if (pos !== buf.length) throw new Error(`${buf.length - pos} trailing bytes`);
  return value;
}
