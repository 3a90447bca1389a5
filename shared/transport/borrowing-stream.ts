import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { MqttFrameError, MqttFrameReader, pubackPacket, readPublish, type PublishView } from './mqtt-frames.js';

/**
 * The byte stream under MQTT.js for MqttTransport: a TCP or TLS socket read into one reused buffer
 * (Node's `onread`), cut into MQTT packets by MqttFrameReader, with a fast lane for the messages a
 * subscriber takes as borrowed views (Transport's `borrowed` subscriptions):
 *
 * - a PUBLISH whose topic a borrowed subscription matches is delivered right here, as a view of the
 *   receive buffer, and acknowledged (PUBACK) once its handlers returned;
 * - every other packet (CONNACK, SUBACK, PINGRESP, other PUBLISHes) goes on to MQTT.js, which
 *   parses and handles it as it would from the socket.
 *
 * Why: MQTT.js allocates a Buffer per socket read and copies every PUBLISH payload out of them, about
 * two bytes allocated per byte received, which V8 frees only at its next collection. At the
 * aggregator, which receives every site's update, that garbage made the peak memory follow the
 * bytes of a round (docs/scaling.md). With the fast lane an update chunk costs no allocation.
 *
 * MQTT 3.1.1 only (fedline's protocol level): a PUBLISH has no properties.
 */
export interface BorrowingStreamOptions {
  host: string;
  port: number;
  /** TLS options when connecting with mqtts (CA, client certificate, key); absent for plain TCP. */
  tls?: tls.ConnectionOptions;
  /** True when a borrowed subscription matches the topic: the PUBLISH takes the fast lane. */
  borrows(topic: string): boolean;
  /** Deliver a fast-lane PUBLISH; its payload is valid only during the call. */
  deliver(publish: PublishView): void;
  /** Socket read size. Default 64 KiB. */
  readBytes?: number;
}

export class BorrowingStream extends Duplex {
  private readonly conn: net.Socket;
  private readonly reader: MqttFrameReader;
  /** MQTT.js is behind (push() said so): the socket stays paused until it reads again. */
  private backedUp = false;

  constructor(private readonly o: BorrowingStreamOptions) {
    super({ allowHalfOpen: false });
    this.reader = new MqttFrameReader((packet, owned) => this.onPacket(packet, owned));
    const onread = {
      buffer: Buffer.allocUnsafeSlow(o.readBytes ?? 64 * 1024),
      callback: (n: number, buf: Uint8Array): boolean => {
        try {
          this.reader.push(Buffer.from(buf.buffer, buf.byteOffset, n));
        } catch (err) {
          // Only a broken frame gets here (handlers' errors are caught where they run): the byte
          // stream cannot be trusted any further, so the connection goes (MQTT.js reconnects).
          this.destroy(err instanceof MqttFrameError ? err : new Error(`MQTT receive failed: ${(err as Error).message}`));
          return false;
        }
        return !this.backedUp;
      },
    };
    const host = o.host;
    this.conn = o.tls
      ? // Node's tls.connect takes onread as net.connect does (its typings omit it).
        tls.connect({ ...o.tls, host, port: o.port, servername: net.isIP(host) === 0 ? host : undefined, onread } as tls.ConnectionOptions)
      : net.connect({ host, port: o.port, onread });
    this.conn.on('end', () => this.push(null));
    this.conn.on('error', (err) => this.destroy(err));
    this.conn.on('close', () => this.destroy());
  }

  private onPacket(packet: Buffer, owned: boolean): void {
    // A handler may have closed the connection while this read was being cut: drop the rest.
    if (this.destroyed) return;
    const publish = readPublish(packet);
    if (publish && publish.qos < 2 && this.o.borrows(publish.topic)) {
      this.o.deliver(publish);
      if (publish.qos === 1 && !this.destroyed) this.conn.write(pubackPacket(publish.packetId!));
      return;
    }
    // MQTT.js may keep what it is given (a payload is a view of it): a view of the receive buffer is copied.
    if (!this.push(owned ? packet : Buffer.from(packet))) this.backedUp = true;
  }

  override _read(): void {
    if (this.backedUp) {
      this.backedUp = false;
      this.conn.resume();
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.conn.write(chunk)) callback();
    else this.conn.once('drain', () => callback());
  }

  /**
   * MQTT.js corks the stream around each packet (fixed header, topic, payload as separate writes):
   * they must reach the socket as one write. Written one by one, a packet went out in several
   * small segments, and Nagle's algorithm held each later one until the previous was acknowledged
   * (tens of ms per QoS 1 round trip on loopback: the fault suite's 50 rounds ran over their
   * timeout). The socket's own cork/uncork sends them with one writev.
   */
  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    this.conn.cork();
    let ok = true;
    for (const { chunk } of chunks) ok = this.conn.write(chunk);
    this.conn.uncork();
    if (ok) callback();
    else this.conn.once('drain', () => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.conn.end(() => callback());
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.conn.destroy();
    callback(err);
  }
}
