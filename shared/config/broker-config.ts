import { z } from 'zod';
import { idSchema as id, metricsConfigSchema, pathSchema as path, positiveIntSchema as posInt } from './service-config.js';

/**
 * The embedded broker's configuration (`fedline broker --config`, broker/main.ts): listener, limits,
 * logins and access rules, TLS, clustering. Validated once at start-up like every service's config
 * (config-file.ts).
 */

export const brokerConfigSchema = z
  .strictObject({
    /** Address to listen on. Default 127.0.0.1 (loopback); use 0.0.0.0 to serve other machines. */
    host: z.string().default('127.0.0.1'),
    /** TCP port; 0 picks a free one (reported on start). Default 1883. */
    port: z.number().int().min(0).max(65535).default(1883),
    /** Longest client id accepted. Default 128 (Aedes' own default is 23). */
    maxClientIdLength: posInt.default(128),
    /** Messages queued per slow subscriber before the broker drops the client. Default 100000. */
    queueLimit: posInt.default(100_000),
    /** How long a CONNECT may take after the TCP connection opened, ms. Default 30000. */
    connectTimeoutMs: posInt.default(30_000),
    /**
     * Close a connection when bytes wait for it and it has read none of them for this long, ms. A
     * reader that takes any bytes stays, however far behind (the aggregator during a round's
     * uploads); a frozen or hostile one goes. Default 60000.
     */
    stallTimeoutMs: posInt.default(60_000),
    /** Largest MQTT packet a logged-in client may send; a bigger one closes its connection. Default 64 MiB (as mosquitto.conf's max_packet_size). */
    maxPacketBytes: posInt.default(64 * 1024 * 1024),
    /**
     * Bytes a client may send before its login is accepted (its CONNECT, will included): checked from
     * the packet header before anything is buffered, so clients that never log in cannot grow the broker. Default 65536.
     */
    maxBytesBeforeLogin: posInt.min(1024).default(65_536),
    /**
     * Failed logins slowed per client address: after `freeFailures` wrong passwords, the address is
     * shut out for `baseDelayMs`, doubled at each further failure up to `maxDelayMs` (its logins are
     * refused without a password check meanwhile). Defaults 5, 1000, 60000.
     */
    loginThrottle: z
      .strictObject({ freeFailures: z.number().int().min(0).default(5), baseDelayMs: posInt.default(1000), maxDelayMs: posInt.default(60_000) })
      .default({ freeFailures: 5, baseDelayMs: 1000, maxDelayMs: 60_000 }),
    /**
     * Let anyone connect and do anything. Default false: every client needs a login (a password or
     * a client certificate) and a role in `auth.accessFile`. For a closed test network only.
     */
    allowAnonymous: z.boolean().default(false),
    auth: z
      .strictObject({
        /** Mosquitto-format password file (`user:$7$...` lines from `fedline passwd` or mosquitto_passwd). */
        passwordFile: path.optional(),
        /** Roles per user (broker/access.ts); `fedline acl` renders the same rules for Mosquitto. */
        accessFile: path,
      })
      .optional(),
    /** The plain (unencrypted) listener on `port`. Default true; false serves TLS only. */
    plainListener: z.boolean().default(true),
    tls: z
      .strictObject({
        /** TLS (mqtts) port. Default 8883. */
        port: z.number().int().min(0).max(65535).default(8883),
        /** PEM server certificate (chain) and its key. */
        certFile: path,
        keyFile: path,
        /** PEM CA bundle client certificates must chain to. */
        caFile: path.optional(),
        /** Refuse clients without a certificate signed by caFile. Default false. */
        requireClientCert: z.boolean().default(false),
        /** The client certificate's CN is the user name, no password (Mosquitto's use_identity_as_username). Default false. */
        identityFromCertificate: z.boolean().default(false),
      })
      .optional(),
    metrics: metricsConfigSchema.optional(),
    /**
     * Run as one node of a broker cluster: the nodes share subscriptions, retained messages (models,
     * round announcements) and every published message through Redis (mqemitter-redis,
     * aedes-persistence-redis). Clients list every node in their `mqtt.urls` and fail over.
     */
    cluster: z
      .strictObject({
        /** redis://[user:password@]host:port[/db] of the Redis all nodes use. */
        redisUrl: z.string().regex(/^redis:\/\/[^\s/]+(\/\d+)?$/, 'must look like redis://host:port or redis://host:port/db'),
        /** This node's id, unique among the nodes. */
        nodeId: id,
        /** Heartbeat between nodes, ms (the same on every node): a node silent for 3 is dead and the wills of its clients not seen since are published. Default 60000. */
        heartbeatIntervalMs: z.number().int().min(100).default(60_000),
      })
      .optional(),
    logLevel: z.string().optional(),
  })
  .superRefine((c, ctx) => {
    if (!c.allowAnonymous && !c.auth)
      ctx.addIssue({
        code: 'custom',
        path: ['auth'],
        message: 'required: anonymous access is off (give auth.accessFile and auth.passwordFile, or set allowAnonymous: true on a closed test network)',
      });
    if (c.allowAnonymous && c.auth)
      ctx.addIssue({ code: 'custom', path: ['allowAnonymous'], message: 'allowAnonymous: true turns auth off; remove one of them' });
    if (c.auth && !c.auth.passwordFile && !c.tls?.identityFromCertificate)
      ctx.addIssue({ code: 'custom', path: ['auth', 'passwordFile'], message: 'required unless tls.identityFromCertificate logs clients in by certificate' });
    if (c.tls?.identityFromCertificate && !c.tls.requireClientCert)
      ctx.addIssue({ code: 'custom', path: ['tls', 'identityFromCertificate'], message: 'needs tls.requireClientCert: true' });
    if (c.tls?.requireClientCert && !c.tls.caFile)
      ctx.addIssue({ code: 'custom', path: ['tls', 'caFile'], message: 'required with requireClientCert: the CA that signs client certificates' });
    if (!c.plainListener && !c.tls) ctx.addIssue({ code: 'custom', path: ['plainListener'], message: 'false leaves no listener: configure tls' });
  });
export type BrokerConfig = z.infer<typeof brokerConfigSchema>;
