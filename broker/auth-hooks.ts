import type { TLSSocket } from 'node:tls';
import type { AedesOptions, Client } from 'aedes';
import type { Counters } from '../shared/util/counters.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { mayPublish, mayPublishRetained, maySubscribe, type AccessPolicy, type UserRights } from './access.js';
import { LoginThrottle, TaskLimiter, type LoginThrottleOptions } from './login-throttle.js';
import type { PasswordFile } from './passwords.js';

export interface AuthOptions {
  /** Role rules (broker/access.ts). */
  access: AccessPolicy;
  /** User names and password hashes; null when logins come from client certificates only. */
  passwords: PasswordFile | null;
  /**
   * Take the user name from the verified client certificate's common name (Mosquitto's
   * use_identity_as_username); the CONNECT user name and password are then ignored.
   */
  identityFromCertificate: boolean;
  /** Failed logins slowed per client address (broker/login-throttle.ts). Default DEFAULT_LOGIN_THROTTLE. */
  loginThrottle?: Partial<LoginThrottleOptions>;
  /**
   * PBKDF2 checks running at once on the thread pool; more wait (up to 256, then refused with
   * CONNACK 3). Default 1: guessers from many addresses take at most one core from the broker.
   */
  maxConcurrentPasswordChecks?: number;
  log: Logger;
  counters?: Counters;
}

export type AuthHooks = Required<Pick<AedesOptions, 'authenticate' | 'authorizePublish' | 'authorizeSubscribe'>>;

/** CONNACK return codes of MQTT 3.1.1 §3.2.2.3. */
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;
const SERVER_UNAVAILABLE = 3;

type AuthenticateError = Parameters<Parameters<AuthHooks['authenticate']>[3]>[0];

function refuse(returnCode: number, message: string): NonNullable<AuthenticateError> {
  return Object.assign(new FedlineError(ErrorCodes.AUTH, message), { returnCode }) as NonNullable<AuthenticateError>;
}

/**
 * Aedes hooks enforcing fedline's access rules: no anonymous clients, users with hashed
 * passwords (or client certificates), and per-role publish and subscribe rights. A refused
 * login gets CONNACK 4 or 5; a refused subscription a SUBACK failure (0x80); a refused publish
 * closes the client's connection (MQTT 3.1.1 §3.3.5: the server may drop it; Aedes does so,
 * Mosquitto acknowledges and discards). Every refusal is logged with client, user and topic.
 */
export function createAuthHooks(o: AuthOptions): AuthHooks {
  const rightsOf = new WeakMap<Client, UserRights>();
  const count = () => o.counters?.inc(ErrorCodes.AUTH);
  const throttle = new LoginThrottle(o.loginThrottle);
  const checks = new TaskLimiter(o.maxConcurrentPasswordChecks ?? 1, 256);
  type Callback = Parameters<AuthHooks['authenticate']>[3];

  const accept = (client: Client, user: string, callback: Callback) => {
    const rights = o.access.rights(user);
    if (!rights) {
      count();
      o.log.warn({ code: ErrorCodes.AUTH, client: client.id, username: user }, 'connection refused: the user has no role in the access file');
      return callback(refuse(NOT_AUTHORIZED, `user "${user}" has no role`), false);
    }
    rightsOf.set(client, rights);
    // The session belongs to the user, whatever client id was asked for (Mosquitto's
    // use_username_as_clientid): nobody can take over another user's session by presenting its
    // client id (MQTT 3.1.1 §3.1.4: a second CONNECT with an existing id disconnects the first).
    const requestedId = client.id;
    (client as { id: string }).id = user;
    o.log.info({ client: user, requestedClientId: requestedId, username: user, role: rights.role }, 'client authenticated');
    callback(null, true);
  };

  const shutOut = (client: Client, user: string, address: string, callback: Callback) => {
    const wait = throttle.blockedFor(address);
    count();
    o.log.warn(
      { code: ErrorCodes.AUTH, client: client.id, username: user, remote: address, retryAfterMs: wait },
      'connection refused: too many failed logins from this address',
    );
    callback(refuse(NOT_AUTHORIZED, `too many failed logins from ${address}: retry in ${Math.ceil(wait / 1000)} s`), false);
  };

  /** The password path: throttled per address, PBKDF2 off the event loop. */
  const checkPassword = (client: Client, user: string, password: string, passwords: PasswordFile, callback: Callback) => {
    const address = (client.conn as unknown as { remoteAddress?: string }).remoteAddress ?? 'unknown';
    if (throttle.blockedFor(address) > 0) return shutOut(client, user, address, callback);
    // Checked again once a slot is free: logins queued behind a failing one meet its shut-out.
    const check = async () => (throttle.blockedFor(address) > 0 ? 'blocked' : passwords.verifyAsync(user, password));
    void checks.run(check).then((ok): void => {
      if (ok === 'blocked') return shutOut(client, user, address, callback);
      if (ok === null) {
        count();
        o.log.warn({ code: ErrorCodes.AUTH, client: client.id, username: user, remote: address }, 'connection refused: too many logins being checked');
        return callback(refuse(SERVER_UNAVAILABLE, 'too many logins being checked; retry later'), false);
      }
      if (!ok) {
        count();
        const delayMs = throttle.failed(address);
        o.log.warn({ code: ErrorCodes.AUTH, client: client.id, username: user, remote: address, delayMs }, 'connection refused: wrong user name or password');
        return callback(refuse(BAD_USERNAME_OR_PASSWORD, 'wrong user name or password'), false);
      }
      accept(client, user, callback);
    });
  };

  return {
    authenticate(client, username, password, callback) {
      const user = username ?? '';
      if (o.identityFromCertificate) {
        const socket = client.conn as unknown as Partial<TLSSocket>;
        const cn = socket.authorized && typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate().subject?.CN : undefined;
        if (!cn) {
          count();
          o.log.warn({ code: ErrorCodes.AUTH, client: client.id }, 'connection refused: no verified client certificate');
          return callback(refuse(NOT_AUTHORIZED, 'a verified client certificate is required'), false);
        }
        return accept(client, Array.isArray(cn) ? cn[0]! : cn, callback);
      }
      if (!user || password === undefined || !o.passwords) {
        count();
        o.log.warn({ code: ErrorCodes.AUTH, client: client.id, username: user || null }, 'connection refused: anonymous clients are not allowed');
        return callback(refuse(NOT_AUTHORIZED, 'anonymous access is not allowed'), false);
      }
      checkPassword(client, user, password.toString('utf8'), o.passwords, callback);
    },

    authorizePublish(client, packet, callback) {
      // A last will goes through here with its client when the client vanishes, so it is held
      // to the same rights. client === null only for a will Aedes restores from persistence for
      // a client of an earlier broker run (never with the in-memory persistence fedline uses).
      if (!client) return callback(null);
      const rights = rightsOf.get(client);
      if (rights && (packet.retain ? mayPublishRetained(rights, packet.topic) : mayPublish(rights, packet.topic))) return callback(null);
      count();
      const what = packet.retain && rights && mayPublish(rights, packet.topic) ? 'a retained publish' : 'publishing';
      o.log.warn(
        { code: ErrorCodes.AUTH, client: client.id, username: rights?.username ?? null, topic: packet.topic, retain: packet.retain },
        `publish refused: ${what} is not allowed for this user here`,
      );
      callback(new FedlineError(ErrorCodes.AUTH, `${what} on ${packet.topic} is not allowed for ${rights?.username ?? 'this client'}`));
    },

    authorizeSubscribe(client, sub, callback) {
      const rights = client ? rightsOf.get(client) : undefined;
      if (rights && maySubscribe(rights, sub.topic)) return callback(null, sub);
      count();
      o.log.warn(
        { code: ErrorCodes.AUTH, client: client?.id, username: rights?.username ?? null, topic: sub.topic },
        'subscription refused: not allowed for this user',
      );
      // A null subscription is a negative SUBACK (0x80) without dropping the connection.
      callback(null, null as never);
    },
  };
}
