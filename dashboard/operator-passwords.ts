import { createHash, pbkdf2, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

const pbkdf2Async = promisify(pbkdf2);

/**
 * The dashboard's operator logins: a password file in the broker's format (Mosquitto 2.x,
 * `user:$7$<iterations>$<salt>$<PBKDF2-SHA512>`, or `$6$`), made with `fedline passwd`. The
 * dashboard sits beside the broker in the layers and may not import broker/passwords.ts, so
 * the check is here again, asynchronous: a login never blocks the page's other requests.
 */
export class OperatorPasswords {
  private constructor(private readonly hashes: Map<string, string>) {}

  static load(path: string): OperatorPasswords {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new FedlineError(ErrorCodes.CONFIG_READ, `cannot read the operators' password file ${path}: ${(err as Error).message}`, { file: path });
    }
    const hashes = new Map<string, string>();
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const colon = line.indexOf(':');
      const hash = line.slice(colon + 1);
      if (colon < 1 || !/^\$(7\$\d+|6)\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/.test(hash))
        throw new FedlineError(ErrorCodes.CONFIG_INVALID, `${path} line ${i + 1}: expected "user:hash" with a hash made by \`fedline passwd\``, { file: path });
      hashes.set(line.slice(0, colon), hash);
    });
    return new OperatorPasswords(hashes);
  }

  async verify(user: string, password: string): Promise<boolean> {
    const stored = this.hashes.get(user);
    // Same work for an unknown user, so that timing does not tell which user names exist.
    const parts = (stored ?? '$7$100000$AAAAAAAAAAAAAAAA$AAAA').split('$');
    let expected: Buffer;
    let actual: Buffer;
    if (parts[1] === '7') {
      const iterations = Number(parts[2]);
      if (!Number.isInteger(iterations) || iterations < 1 || iterations > 10_000_000) return false;
      expected = Buffer.from(parts[4]!, 'base64');
      actual = await pbkdf2Async(password, Buffer.from(parts[3]!, 'base64'), iterations, expected.length || 64, 'sha512');
    } else {
      expected = Buffer.from(parts[3] ?? '', 'base64');
      actual = createHash('sha512')
        .update(password)
        .update(Buffer.from(parts[2] ?? '', 'base64'))
        .digest();
    }
    return stored !== undefined && expected.length === actual.length && expected.length > 0 && timingSafeEqual(expected, actual);
  }
}
