import { createServer, connect, type Server, type Socket } from 'node:net';

const SECURITY_NONE = 'http://opcfoundation.org/UA/SecurityPolicy#None';
/** OPC UA status BadSecurityChecksFailed. */
const BAD_SECURITY_CHECKS_FAILED = 0x80130000;

/**
 * A loopback proxy in front of an OPC UA server that refuses the client's certificate the way
 * servers written in C do (open62541 and most PLC firmware): a secured OpenSecureChannel request
 * is answered with an OPC UA TCP Error message (ERR, BadSecurityChecksFailed, Part 6 7.1.2.5)
 * and the connection is closed, where node-opcua's own server answers with a ServiceFault. Plain
 * (SecurityPolicy None) connections, such as the endpoint discovery that precedes a secured one,
 * pass through unchanged, so the client sees a server that works but will not trust it.
 */
export class OpcuaRefusingProxy {
  readonly port: number;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  /** Secured OpenSecureChannel requests refused so far. */
  refused = 0;

  private constructor(server: Server, port: number) {
    this.server = server;
    this.port = port;
  }

  static async start(targetPort: number): Promise<OpcuaRefusingProxy> {
    let proxy: OpcuaRefusingProxy | null = null;
    const server = createServer((client) => proxy!.handle(client, targetPort));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new OpcuaRefusingProxy(server, (server.address() as { port: number }).port);
    return proxy;
  }

  get endpoint(): string {
    return `opc.tcp://127.0.0.1:${this.port}`;
  }

  private handle(client: Socket, targetPort: number): void {
    const upstream = connect(targetPort, '127.0.0.1');
    this.sockets.add(client).add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    let pending = Buffer.alloc(0);
    client.on('data', (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      // Whole messages only: type (3 bytes), chunk type (1), size (uint32 LE, the whole message).
      while (pending.length >= 8 && pending.length >= pending.readUInt32LE(4)) {
        const size = pending.readUInt32LE(4);
        const message = pending.subarray(0, size);
        pending = pending.subarray(size);
        if (message.toString('latin1', 0, 3) === 'OPN' && policyOf(message) !== SECURITY_NONE) {
          this.refused++;
          client.end(errMessage(BAD_SECURITY_CHECKS_FAILED, 'the client certificate is not trusted'), close);
          upstream.destroy();
          return;
        }
        upstream.write(message);
      }
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    for (const s of [client, upstream]) {
      s.on('error', close);
      s.on('close', close);
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** The SecurityPolicyUri of an OPN message: after the header (8 bytes) and the SecureChannelId (4), a String (int32 length, UTF-8). */
function policyOf(opn: Buffer): string {
  const length = opn.readInt32LE(12);
  return length > 0 ? opn.toString('utf8', 16, 16 + length) : '';
}

function errMessage(statusCode: number, reason: string): Buffer {
  const text = Buffer.from(reason, 'utf8');
  const m = Buffer.alloc(16 + text.length);
  m.write('ERRF', 0, 'latin1');
  m.writeUInt32LE(m.length, 4);
  m.writeUInt32LE(statusCode, 8);
  m.writeInt32LE(text.length, 12);
  text.copy(m, 16);
  return m;
}
