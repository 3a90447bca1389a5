/**
 * MQTT 3.1.1 packet framing for the receive path of shared/transport/borrowing-stream.ts: it cuts
 * a byte stream (socket reads of any size and alignment) into whole packets, without allocating a
 * Buffer per packet. Pure logic, no sockets: the stream feeds it.
 *
 * - A packet that lies whole inside one read is handed on as a view of that read.
 * - A packet spread over several reads is gathered in one assembly buffer that is reused from packet
 *   to packet (it grows up to `reuseLimit`); a larger packet gets a buffer of its own, exactly its
 *   size, which the consumer may keep (`owned`).
 *
 * A view (owned false) is valid only during the onPacket call: the next read overwrites it.
 *
 * Why not mqtt-packet's parser (which MQTT.js uses and which still parses every other packet
 * here): it gathers reads in a BufferList and copies each packet's payload out of it, so every
 * byte received is allocated twice (the socket read and the copy), and the aggregator's memory
 * followed the bytes received (docs/scaling.md, "The aggregator's memory at small updates").
 */

/** The largest remaining length MQTT allows (4 length bytes): 256 MiB - 1. */
export const MQTT_MAX_REMAINING_LENGTH = 268_435_455;

export type PacketSink = (packet: Buffer, owned: boolean) => void;

export class MqttFrameError extends Error {}

export class MqttFrameReader {
  /** Fixed header gathered so far when it is split between reads (at most 5 bytes). */
  private readonly header = Buffer.alloc(5);
  private headerLength = 0;
  /** The packet being gathered across reads, its length, and how much of it is in. */
  private target: Buffer | null = null;
  private targetOwned = false;
  private packetLength = 0;
  private filled = 0;
  private assembly: Buffer;

  constructor(
    private readonly onPacket: PacketSink,
    /** Packets up to this many bytes are gathered in the reused buffer; larger ones get their own. */
    private readonly reuseLimit = 4 * 1024 * 1024,
    initialAssemblyBytes = 64 * 1024,
  ) {
    this.assembly = Buffer.allocUnsafeSlow(Math.min(initialAssemblyBytes, reuseLimit));
  }

  /** Bytes of the reused assembly buffer (it grows to the largest packet up to reuseLimit). */
  get assemblyBytes(): number {
    return this.assembly.byteLength;
  }

  /** Feed the next bytes of the stream; `bytes` may be reused by the caller once this returns. */
  push(bytes: Buffer): void {
    let at = 0;
    const end = bytes.byteLength;
    while (at < end) {
      if (this.target) {
        const take = Math.min(end - at, this.packetLength - this.filled);
        bytes.copy(this.target, this.filled, at, at + take);
        this.filled += take;
        at += take;
        if (this.filled === this.packetLength) this.emitTarget();
        continue;
      }
      if (this.headerLength === 0) {
        // Fast path: a whole packet inside this read is handed on as a view, with no copy.
        const fixed = readFixedHeader(bytes, at, end);
        if (fixed !== null && at + fixed.packetLength <= end) {
          this.onPacket(bytes.subarray(at, at + fixed.packetLength), false);
          at += fixed.packetLength;
          continue;
        }
      }
      // Gather the fixed header byte by byte until its length field ends, then the body.
      this.header[this.headerLength++] = bytes[at++]!;
      const fixed = readFixedHeader(this.header, 0, this.headerLength);
      if (fixed === null) continue;
      this.startPacket(fixed.packetLength);
    }
  }

  private startPacket(packetLength: number): void {
    this.packetLength = packetLength;
    if (packetLength <= this.reuseLimit) {
      if (this.assembly.byteLength < packetLength) {
        this.assembly = Buffer.allocUnsafeSlow(Math.min(this.reuseLimit, Math.max(packetLength, this.assembly.byteLength * 2)));
      }
      this.target = this.assembly;
      this.targetOwned = false;
    } else {
      this.target = Buffer.allocUnsafe(packetLength);
      this.targetOwned = true;
    }
    this.header.copy(this.target, 0, 0, this.headerLength);
    this.filled = this.headerLength;
    this.headerLength = 0;
    if (this.filled === this.packetLength) this.emitTarget();
  }

  private emitTarget(): void {
    const packet = this.target!.subarray(0, this.packetLength);
    const owned = this.targetOwned;
    this.target = null;
    this.targetOwned = false;
    this.onPacket(packet, owned);
  }
}

/**
 * The fixed header at `at`: null when it is not complete before `end`. Throws MqttFrameError on a
 * length field longer than MQTT's four bytes.
 */
function readFixedHeader(bytes: Uint8Array, at: number, end: number): { packetLength: number } | null {
  let remaining = 0;
  let multiplier = 1;
  for (let i = 1; i <= 4; i++) {
    if (at + i >= end) return null;
    const b = bytes[at + i]!;
    remaining += (b & 0x7f) * multiplier;
    if ((b & 0x80) === 0) return { packetLength: 1 + i + remaining };
    multiplier *= 128;
  }
  throw new MqttFrameError('MQTT packet length field is longer than 4 bytes');
}

/** An MQTT 3.1.1 PUBLISH packet's fields; `payload` is a view of the packet. */
export interface PublishView {
  topic: string;
  qos: 0 | 1 | 2;
  retain: boolean;
  dup: boolean;
  /** Present for QoS 1 and 2. */
  packetId: number | null;
  payload: Buffer;
}

export const PUBLISH = 3;

/** The packet type (upper four bits of the first byte). */
export function packetType(packet: Uint8Array): number {
  return packet[0]! >> 4;
}

/**
 * Read a whole PUBLISH packet (MQTT 3.1.1: no properties). Returns null when it is not one or is
 * malformed; the caller then leaves it to MQTT.js, which reports it.
 */
export function readPublish(packet: Buffer): PublishView | null {
  if (packetType(packet) !== PUBLISH) return null;
  const flags = packet[0]! & 0x0f;
  const qos = (flags >> 1) & 0x03;
  if (qos === 3) return null;
  let at = 1;
  while (at < 5 && at < packet.byteLength && (packet[at]! & 0x80) !== 0) at++;
  at++;
  if (at + 2 > packet.byteLength) return null;
  const topicLength = packet.readUInt16BE(at);
  at += 2;
  if (at + topicLength > packet.byteLength) return null;
  const topic = packet.toString('utf8', at, at + topicLength);
  at += topicLength;
  let packetId: number | null = null;
  if (qos > 0) {
    if (at + 2 > packet.byteLength) return null;
    packetId = packet.readUInt16BE(at);
    at += 2;
  }
  return { topic, qos: qos as 0 | 1 | 2, retain: (flags & 0x01) !== 0, dup: (flags & 0x08) !== 0, packetId, payload: packet.subarray(at) };
}

/** The PUBACK for a QoS 1 PUBLISH. */
export function pubackPacket(packetId: number): Buffer {
  return Buffer.from([0x40, 0x02, packetId >> 8, packetId & 0xff]);
}
