import { createServer, type Server, type Socket } from 'node:net';
import { Aedes, type AedesOptions } from 'aedes';
import type { Logger } from '../shared/logger.js';
import { silentLogger } from '../shared/logger.js';

export interface BrokerOptions {
  /** Address to listen on. Default 127.0.0.1. */
  host?: string;
  /** TCP port; 0 picks a free one. Default 1883. */
  port?: number;
  /** Longest client id accepted. Default 128. */
  maxClientIdLength?: number;
  /** Messages queued per slow subscriber. Default 100000. */
  queueLimit?: number;
  /** ms a client may take to send CONNECT. Default 30000. */
  connectTimeoutMs?: number;
  logger?: Logger;
  /** Security hooks (authentication, ACL); safe defaults when absent: everything allowed. */
  hooks?: Pick<AedesOptions, 'authenticate' | 'authorizePublish' | 'authorizeSubscribe' | 'authorizeForward' | 'preConnect'>;
}

export interface RunningBroker {
  readonly host: string;
  readonly port: number;
  readonly url: string;
  readonly aedes: Aedes;
  /** Number of MQTT clients connected now. */
  connectedClients(): number;
  close(): Promise<void>;
}

/**
 * The embedded Aedes broker (MQTT 3.1.1) on a plain TCP listener. Client errors are logged as
 * events; a misbehaving client never takes the broker down.
 */
export async function createBroker(options: BrokerOptions = {}): Promise<RunningBroker> {
  const log = options.logger ?? silentLogger();
  const aedes = await Aedes.createBroker({
    maxClientsIdLength: options.maxClientIdLength ?? 128,
    queueLimit: options.queueLimit ?? 100_000,
    connectTimeout: options.connectTimeoutMs ?? 30_000,
    ...options.hooks,
  });
  aedes.on('clientError', (client, err) => log.warn({ client: client?.id, err: err.message }, 'client error'));
  aedes.on('connectionError', (client, err) => log.warn({ client: client?.id, err: err.message }, 'connection error'));
  aedes.on('client', (client) => log.debug({ client: client.id }, 'client connected'));
  aedes.on('clientDisconnect', (client) => log.debug({ client: client.id }, 'client disconnected'));

  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // Large chunks: disable Nagle so acks and small control messages are not delayed.
    socket.setNoDelay(true);
    aedes.handle(socket);
  });
  server.on('error', (err) => log.error({ err: err.message }, 'listener error'));

  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 1883, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : (options.port ?? 1883);
  log.info({ host, port }, 'broker listening');

  let closing: Promise<void> | null = null;
  return {
    host,
    port,
    url: `mqtt://${host.includes(':') ? `[${host}]` : host}:${port}`,
    aedes,
    connectedClients: () => aedes.connectedClients,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => undefined);
        aedes.close(() => {
          for (const s of sockets) s.destroy();
          log.info('broker closed');
          resolve();
        });
      });
      return closing;
    },
  };
}
