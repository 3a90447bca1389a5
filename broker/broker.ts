import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { Aedes, type AedesOptions } from 'aedes';
import { ErrorCodes } from '../shared/protocol/errors.js';
import type { Counters } from '../shared/util/counters.js';
import type { Logger } from '../shared/util/logger.js';
import { silentLogger } from '../shared/util/logger.js';
import { dropWillsElsewhere, openCluster, type ClusterOptions } from './cluster.js';
import { DEFAULT_PACKET_LIMITS, PacketGuard, type PacketLimits } from './packet-guard.js';
import { StallGuard } from './stall-guard.js';

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
  /**
   * Close a connection when bytes wait for it and none has been read for this long, ms
   * (broker/stall-guard.ts; replaces Aedes' drainTimeout). Default 60000.
   */
  stallTimeoutMs?: number;
  /**
   * Packet sizes, checked from each fixed header before the packet is buffered: a connection that
   * exceeds them is closed. Default DEFAULT_PACKET_LIMITS (64 MiB; 64 KiB before the login).
   */
  packetLimits?: PacketLimits;
  logger?: Logger;
  counters?: Counters;
  /** Join a broker cluster: subscriptions, retained messages and messages between nodes go through Redis (broker/cluster.ts). Default: a standalone broker. */
  cluster?: ClusterOptions;
  /** Security hooks (authentication, ACL); safe defaults when absent: everything allowed. */
  hooks?: Pick<AedesOptions, 'authenticate' | 'authorizePublish' | 'authorizeSubscribe' | 'authorizeForward' | 'preConnect'>;
  /** The plain TCP listener on `port`. Default true; false with `tls` serves TLS only. */
  plain?: boolean;
  /** A TLS listener (mqtts), in addition to or instead of the plain one. */
  tls?: {
    /** TCP port; 0 picks a free one. */
    port: number;
    /** PEM server certificate (chain) and key. */
    cert: Buffer;
    key: Buffer;
    /** PEM CA bundle that client certificates must chain to. */
    ca?: Buffer;
    /** Refuse clients without a certificate signed by `ca`. Default false. */
    requireClientCert?: boolean;
  };
}

export interface RunningBroker {
  readonly host: string;
  /** The plain listener's port, or the TLS port when there is no plain listener. */
  readonly port: number;
  readonly url: string;
  /** mqtts://host:port of the TLS listener, when there is one. */
  readonly tlsUrl: string | null;
  readonly tlsPort: number | null;
  readonly aedes: Aedes;
  /** Number of MQTT clients connected now. */
  connectedClients(): number;
  /** Connections closed because they read nothing for `stallTimeoutMs` while bytes waited for them. */
  stalledClosed(): number;
  close(): Promise<void>;
}

/** setTimeout's largest delay (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

type Authenticate = NonNullable<AedesOptions['authenticate']>;
const guards = new WeakMap<object, PacketGuard>();
/** The MQTT client id of each connection once it has logged in, for the logs of the connection guards. */
const clientIds = new WeakMap<object, string>();

/** The authenticate hook, telling the connection's packet guard when a login is accepted. Without a hook: everyone may log in. */
function markLogins(authenticate: Authenticate | undefined): Authenticate {
  const inner: Authenticate = authenticate ?? ((_client, _user, _password, callback) => callback(null, true));
  return (client, username, password, callback) =>
    inner(client, username, password, (err, ok) => {
      if (!err && ok) guards.get(client.conn)?.loginAccepted();
      callback(err, ok);
    });
}

/**
 * Watch the bytes Aedes reads from `socket` and close it as soon as a packet header announces
 * more than the limits allow. Aedes reads on 'readable', so this 'data' listener sees each chunk
 * as Aedes reads it, before it reaches the parser, and does not change the stream's flow.
 */
function guardPackets(socket: Socket, guard: PacketGuard, log: Logger, counters: Counters | undefined): void {
  guards.set(socket, guard);
  const onData = (chunk: Buffer) => {
    const violation = guard.feed(chunk);
    if (violation === null) return;
    socket.off('data', onData);
    counters?.inc(ErrorCodes.MSG_OVERSIZE);
    log.warn({ code: ErrorCodes.MSG_OVERSIZE, remote: socket.remoteAddress, client: clientIds.get(socket) }, `connection closed: the client ${violation}`);
    socket.destroy();
  };
  socket.on('data', onData);
}

/**
 * The embedded Aedes broker (MQTT 3.1.1) on a plain TCP listener. Client errors are logged as
 * events; a misbehaving client never takes the broker down.
 */
export async function createBroker(options: BrokerOptions = {}): Promise<RunningBroker> {
  const log = options.logger ?? silentLogger();
  const cluster = options.cluster ? await openCluster(options.cluster, log) : null;
  const aedes = await Aedes.createBroker({
    ...(cluster
      ? {
          id: options.cluster!.nodeId,
          mq: cluster.mq,
          persistence: cluster.persistence,
          ...(options.cluster!.heartbeatIntervalMs ? { heartbeatInterval: options.cluster!.heartbeatIntervalMs } : {}),
        }
      : {}),
    maxClientsIdLength: options.maxClientIdLength ?? 128,
    queueLimit: options.queueLimit ?? 100_000,
    connectTimeout: options.connectTimeoutMs ?? 30_000,
    // The stall guard below closes readers that stopped; Aedes' drain timeout would also close one
    // that reads steadily but never empties its buffer (stall-guard.ts). Not 0: only with a timeout
    // does Aedes keep the deliveries that wait for a drain in a list it fails when the client
    // closes; with 0 they would wait for a 'drain' that never comes and hold its delivery slots.
    drainTimeout: MAX_TIMER_MS,
    ...options.hooks,
    authenticate: markLogins(options.hooks?.authenticate),
  });
  // A closed client fails each delivery that waited for it with 'connection closed': one line per client, not one per message.
  const closedLogged = new WeakSet<object>();
  aedes.on('clientError', (client, err) => {
    if (err.message === 'connection closed' && client) {
      if (closedLogged.has(client)) return;
      closedLogged.add(client);
    }
    log.warn({ client: client?.id, err: err.message }, 'client error');
  });
  aedes.on('connectionError', (client, err) => log.warn({ client: client?.id, err: err.message }, 'connection error'));
  aedes.on('client', (client) => {
    log.debug({ client: client.id }, 'client connected');
    clientIds.set(client.conn, client.id);
    if (cluster) dropWillsElsewhere(aedes as unknown as Parameters<typeof dropWillsElsewhere>[0], client.id, log);
  });
  aedes.on('clientDisconnect', (client) => log.debug({ client: client.id }, 'client disconnected'));

  const sockets = new Set<Socket>();
  const limits = options.packetLimits ?? DEFAULT_PACKET_LIMITS;
  const stalls = new StallGuard<Socket>(options.stallTimeoutMs ?? 60_000, (socket, info) => {
    options.counters?.inc(ErrorCodes.TIMEOUT);
    log.warn(
      { code: ErrorCodes.TIMEOUT, remote: socket.remoteAddress, client: clientIds.get(socket), ...info },
      'connection closed: the client read nothing while bytes waited for it (stallTimeoutMs)',
    );
  });
  stalls.start();
  const accept = (socket: Socket | TLSSocket) => {
    sockets.add(socket);
    stalls.watch(socket);
    socket.on('close', () => {
      sockets.delete(socket);
      stalls.forget(socket);
    });
    // Large chunks: disable Nagle so acks and small control messages are not delayed.
    socket.setNoDelay(true);
    aedes.handle(socket);
    guardPackets(socket, new PacketGuard(limits), log, options.counters);
  };
  const host = options.host ?? '127.0.0.1';
  const listen = async (server: Server, port: number, what: string): Promise<number> => {
    server.on('error', (err) => log.error({ err: err.message, listener: what }, 'listener error'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address();
    return typeof address === 'object' && address ? address.port : port;
  };
  const servers: Server[] = [];
  const urlOf = (scheme: string, p: number) => `${scheme}://${host.includes(':') ? `[${host}]` : host}:${p}`;
  let plainPort: number | null = null;
  if (options.plain !== false || !options.tls) {
    const server = createServer(accept);
    servers.push(server);
    plainPort = await listen(server, options.port ?? 1883, 'mqtt');
    log.info({ host, port: plainPort, ...(options.cluster ? { nodeId: options.cluster.nodeId } : {}) }, 'broker listening');
  }
  let tlsPort: number | null = null;
  if (options.tls) {
    const t = options.tls;
    const requireCert = t.requireClientCert ?? false;
    const server = createTlsServer(
      { cert: t.cert, key: t.key, ...(t.ca ? { ca: t.ca } : {}), requestCert: requireCert, rejectUnauthorized: requireCert, minVersion: 'TLSv1.2' },
      accept,
    );
    // A failed handshake (wrong CA, no certificate, plain MQTT on the TLS port) is the client's problem, not ours.
    server.on('tlsClientError', (err, socket) => log.warn({ err: err.message, remote: socket.remoteAddress }, 'TLS handshake refused'));
    servers.push(server);
    tlsPort = await listen(server, t.port, 'mqtts');
    log.info({ host, port: tlsPort, requireClientCert: requireCert }, 'broker listening (TLS)');
  }

  let closing: Promise<void> | null = null;
  return {
    host,
    port: plainPort ?? tlsPort!,
    url: plainPort !== null ? urlOf('mqtt', plainPort) : urlOf('mqtts', tlsPort!),
    tlsUrl: tlsPort !== null ? urlOf('mqtts', tlsPort) : null,
    tlsPort,
    aedes,
    connectedClients: () => aedes.connectedClients,
    stalledClosed: () => stalls.closed,
    close() {
      closing ??= new Promise<void>((resolve) => {
        stalls.stop();
        for (const server of servers) server.close(() => undefined);
        aedes.close(() => {
          for (const s of sockets) s.destroy();
          void (cluster?.closePersistence() ?? Promise.resolve()).then(() => {
            log.info('broker closed');
            resolve();
          });
        });
      });
      return closing;
    },
  };
}
