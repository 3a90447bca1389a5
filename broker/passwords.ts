import { createHash, pbkdf2, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * Password files in Mosquitto 2.x's format, so that one file serves both brokers: a line per
 * user, `username:hash`, where hash is
 *   $7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, iterations, 64)>
 *   $6$<base64 salt>$<base64 SHA-512(password || salt)>        (Mosquitto 1.x, still accepted)
 * `mosquitto_passwd` writes them, and so does `fedline passwd` (shared here). Plain-text
 * passwords are refused: a password file never holds a password.
 */

/** PBKDF2 rounds of new hashes: Mosquitto's own default (101) is far below today's advice. */
export const DEFAULT_PBKDF2_ITERATIONS = 100_000;
const SALT_BYTES = 12;

export function hashPassword(password: string, iterations = DEFAULT_PBKDF2_ITERATIONS, salt: Buffer = randomBytes(SALT_BYTES)): string {
  const hash = pbkdf2Sync(password, salt, iterations, 64, 'sha512');
  return `$7$${iterations}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/** A stored hash taken apart: what to compute from the password, and what it must equal. */
type ParsedHash = { kind: 'pbkdf2'; iterations: number; salt: Buffer; expected: Buffer } | { kind: 'sha512'; salt: Buffer; expected: Buffer } | null;

function parseHash(stored: string): ParsedHash {
  const parts = stored.split('$');
  if (parts.length === 5 && parts[1] === '7') {
    const iterations = Number(parts[2]);
    if (!Number.isInteger(iterations) || iterations < 1 || iterations > 10_000_000) return null;
    return { kind: 'pbkdf2', iterations, salt: Buffer.from(parts[3]!, 'base64'), expected: Buffer.from(parts[4]!, 'base64') };
  }
  if (parts.length === 4 && parts[1] === '6') return { kind: 'sha512', salt: Buffer.from(parts[2]!, 'base64'), expected: Buffer.from(parts[3]!, 'base64') };
  return null;
}

function sameHash(expected: Buffer, actual: Buffer): boolean {
  return expected.length === actual.length && expected.length > 0 && timingSafeEqual(expected, actual);
}

/** True when `password` matches the stored hash; constant time in the hash comparison. Blocks the thread: tools only. */
export function verifyPassword(password: string, stored: string): boolean {
  const h = parseHash(stored);
  if (!h) return false;
  const actual =
    h.kind === 'pbkdf2'
      ? pbkdf2Sync(password, h.salt, h.iterations, h.expected.length || 64, 'sha512')
      : createHash('sha512').update(password).update(h.salt).digest();
  return sameHash(h.expected, actual);
}

/** verifyPassword with PBKDF2 on libuv's thread pool: the broker's event loop keeps serving while it runs. */
export function verifyPasswordAsync(password: string, stored: string): Promise<boolean> {
  const h = parseHash(stored);
  if (!h) return Promise.resolve(false);
  if (h.kind === 'sha512') return Promise.resolve(sameHash(h.expected, createHash('sha512').update(password).update(h.salt).digest()));
  return new Promise((resolve) =>
    pbkdf2(password, h.salt, h.iterations, h.expected.length || 64, 'sha512', (err, actual) => resolve(!err && sameHash(h.expected, actual))),
  );
}

/** A hash no password matches, checked for unknown users so that they cost as much as known ones. */
const UNKNOWN_USER_HASH = `$7$${DEFAULT_PBKDF2_ITERATIONS}$AAAAAAAAAAAAAAAA$${Buffer.alloc(64).toString('base64')}`;

export class PasswordFile {
  private readonly hashes: Map<string, string>;
  readonly path: string;

  private constructor(path: string, hashes: Map<string, string>) {
    this.path = path;
    this.hashes = hashes;
  }

  /** Parse a password file's text; errors name the file and line. */
  static parse(text: string, path: string): PasswordFile {
    const hashes = new Map<string, string>();
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const colon = line.indexOf(':');
      const where = `${path} line ${i + 1}`;
      if (colon < 1) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `${where}: expected "username:hash"`, { file: path });
      const user = line.slice(0, colon);
      const hash = line.slice(colon + 1);
      if (!/^\$(7\$\d+|6)\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/.test(hash)) {
        throw new FedlineError(
          ErrorCodes.CONFIG_INVALID,
          `${where}: the password of "${user}" is not a $7$ (PBKDF2-SHA512) or $6$ (SHA-512) hash; hash it with \`fedline passwd\` or mosquitto_passwd`,
          { file: path },
        );
      }
      if (hashes.has(user)) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `${where}: user "${user}" appears twice`, { file: path });
      hashes.set(user, hash);
    });
    return new PasswordFile(path, hashes);
  }

  static load(path: string): PasswordFile {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new FedlineError(ErrorCodes.CONFIG_READ, `cannot read the password file ${path}: ${(err as Error).message}`, { file: path });
    }
    return PasswordFile.parse(text, path);
  }

  has(username: string): boolean {
    return this.hashes.has(username);
  }

  users(): string[] {
    return [...this.hashes.keys()];
  }

  verify(username: string, password: string): boolean {
    // Same work for an unknown user, so that timing does not tell which user names exist.
    return verifyPassword(password, this.hashes.get(username) ?? UNKNOWN_USER_HASH) && this.hashes.has(username);
  }

  /** verify() off the event loop (PBKDF2 on the thread pool): what the broker uses. */
  async verifyAsync(username: string, password: string): Promise<boolean> {
    return (await verifyPasswordAsync(password, this.hashes.get(username) ?? UNKNOWN_USER_HASH)) && this.hashes.has(username);
  }
}

/** A password file's text with `username` set to `password` (added or replaced). */
export function setPasswordLine(text: string, username: string, password: string, iterations = DEFAULT_PBKDF2_ITERATIONS): string {
  if (!username || username.includes(':') || /\s/.test(username))
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `user name "${username}" must not be empty or contain ":" or spaces`);
  const line = `${username}:${hashPassword(password, iterations)}`;
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
  const i = lines.findIndex((l) => l.slice(0, l.indexOf(':')) === username);
  if (i >= 0) lines[i] = line;
  else lines.push(line);
  return lines.join('\n') + '\n';
}
