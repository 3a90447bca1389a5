/**
 * Packet sizes on one MQTT connection, checked from each packet's fixed header as the bytes
 * arrive, before the packet is buffered: the MQTT parser (mqtt-packet, inside Aedes) keeps a whole
 * packet in memory until its last byte, so a client announcing a 200 MB CONNECT and streaming it
 * slowly would grow the broker by that much without ever logging in. Pure: no I/O; the broker
 * (broker/broker.ts) feeds it every chunk it reads and closes the socket on a violation.
 */

export interface PacketLimits {
  /** Largest packet (fixed header included) a logged-in client may send. */
  maxPacketBytes: number;
  /**
   * Bytes a client may send before its login is accepted: its CONNECT (will message included) and
   * anything it sends before the CONNACK. Also the largest CONNECT.
   */
  maxBytesBeforeLogin: number;
}

/** fedline's defaults: 64 MiB packets (as mosquitto.conf's max_packet_size), 64 KiB before the login. */
export const DEFAULT_PACKET_LIMITS: Readonly<PacketLimits> = { maxPacketBytes: 64 * 1024 * 1024, maxBytesBeforeLogin: 64 * 1024 };

/** MQTT 3.1.1 §2.2.3: the remaining length takes at most 4 bytes. */
const MAX_LENGTH_BYTES = 4;

export class PacketGuard {
  private readonly limits: PacketLimits;
  private loggedIn = false;
  private bytesBeforeLogin = 0;
  /** Where the parser is: reading the type byte, the remaining length, or skipping the body. */
  private phase: 'type' | 'length' | 'body' = 'type';
  private length = 0;
  private multiplier = 1;
  private lengthBytes = 0;
  private bodyLeft = 0;

  constructor(limits: PacketLimits) {
    this.limits = limits;
  }

  /** The login was accepted: from now on only maxPacketBytes applies. */
  loginAccepted(): void {
    this.loggedIn = true;
  }

  /** Account for the next bytes of the stream; a reason when the connection must be closed, else null. */
  feed(chunk: Uint8Array): string | null {
    if (!this.loggedIn) {
      this.bytesBeforeLogin += chunk.length;
      if (this.bytesBeforeLogin > this.limits.maxBytesBeforeLogin)
        return `sent more than ${this.limits.maxBytesBeforeLogin} bytes before its login was accepted`;
    }
    let i = 0;
    while (i < chunk.length) {
      if (this.phase === 'body') {
        const n = Math.min(this.bodyLeft, chunk.length - i);
        this.bodyLeft -= n;
        i += n;
        if (this.bodyLeft === 0) this.phase = 'type';
        continue;
      }
      const byte = chunk[i++]!;
      if (this.phase === 'type') {
        this.phase = 'length';
        this.length = 0;
        this.multiplier = 1;
        this.lengthBytes = 0;
        continue;
      }
      this.length += (byte & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      this.lengthBytes++;
      if (byte & 0x80) {
        if (this.lengthBytes >= MAX_LENGTH_BYTES) return 'sent a malformed remaining length';
        continue;
      }
      const total = 1 + this.lengthBytes + this.length;
      const limit = this.loggedIn ? this.limits.maxPacketBytes : this.limits.maxBytesBeforeLogin;
      if (total > limit) return `announced a ${total}-byte packet, above the ${limit}-byte limit${this.loggedIn ? '' : ' before login'}`;
      this.bodyLeft = this.length;
      this.phase = this.length === 0 ? 'type' : 'body';
    }
    return null;
  }
}
