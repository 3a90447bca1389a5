import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * A loopback TCP proxy in front of a broker, to cut links the way a factory network does: every
 * connection through it can be dropped at once (a switch reboot, a cable pulled), or after a given
 * number of bytes from the client (mid-transfer). Counts bytes both ways.
 */
export class TcpProxy {
  readonly port: number;
  private readonly server: Server;
  private readonly pairs = new Set<{ client: Socket; upstream: Socket }>();
  private dropAfterClientBytes: number | null = null;
  private dropAfterServerBytes: number | null = null;
  private paused = false;
  /** Upload bandwidth per connection, bytes per second (null: unlimited). */
  uploadBytesPerSec: number | null = null;
  bytesFromClients = 0;
  bytesToClients = 0;
  connections = 0;
  drops = 0;

  private constructor(server: Server, port: number) {
    this.server = server;
    this.port = port;
  }

  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
    let proxy: TcpProxy | null = null;
    const server = createServer((client) => {
      const p = proxy!;
      if (p.paused) {
        client.destroy();
        return;
      }
      p.connections++;
      const upstream = connect(targetPort, targetHost);
      const pair = { client, upstream };
      p.pairs.add(pair);
      const close = () => {
        client.destroy();
        upstream.destroy();
        p.pairs.delete(pair);
      };
      client.on('data', (d: Buffer) => {
        p.bytesFromClients += d.length;
        if (p.dropAfterClientBytes !== null && p.bytesFromClients >= p.dropAfterClientBytes) {
          p.dropAfterClientBytes = null;
          p.dropAll();
          return;
        }
        if (p.uploadBytesPerSec === null) {
          upstream.write(d);
          return;
        }
        // A slow uplink: hold the client until this packet "took" its time on the wire.
        client.pause();
        setTimeout(
          () => {
            if (!upstream.destroyed) upstream.write(d);
            client.resume();
          },
          (1000 * d.length) / p.uploadBytesPerSec,
        );
      });
      upstream.on('data', (d: Buffer) => {
        p.bytesToClients += d.length;
        if (p.dropAfterServerBytes !== null && p.bytesToClients >= p.dropAfterServerBytes) {
          p.dropAfterServerBytes = null;
          p.dropAll();
          return;
        }
        client.write(d);
      });
      client.on('error', close);
      upstream.on('error', close);
      client.on('close', close);
      upstream.on('close', close);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new TcpProxy(server, (server.address() as { port: number }).port);
    return proxy;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** Cut every open connection (both directions, no FIN handshake courtesy: RST-like destroy). */
  dropAll(): void {
    this.drops++;
    for (const { client, upstream } of this.pairs) {
      if (client.resetAndDestroy) client.resetAndDestroy();
      else client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /** Cut every connection once clients have sent `bytes` more bytes in total. */
  dropAfter(bytes: number): void {
    this.dropAfterClientBytes = this.bytesFromClients + bytes;
  }

  /** Cut every connection once the broker has sent clients `bytes` more bytes in total (mid-download). */
  dropAfterDownload(bytes: number): void {
    this.dropAfterServerBytes = this.bytesToClients + bytes;
  }

  /** Refuse new connections for a while (the link stays down). */
  setDown(down: boolean): void {
    this.paused = down;
    if (down) this.dropAll();
  }

  async close(): Promise<void> {
    this.dropAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
