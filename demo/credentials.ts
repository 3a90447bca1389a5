import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AccessUser } from '../broker/access.js';
import { hashPassword } from '../broker/passwords.js';

export interface DemoCredentials {
  /** For the broker config's `auth`. */
  auth: { passwordFile: string; accessFile: string };
  /** A service's `mqtt` login: user name and the file holding its password. */
  login(user: string): { username: string; passwordFile: string };
  password(user: string): string;
}

/**
 * Fresh credentials for one demo run: a random password per service (files readable by the
 * owner only), the broker's password file (hashes) and access file (roles). The demo runs with
 * the same access control as a factory installation.
 */
export async function writeDemoCredentials(dir: string, topicRoot: string, users: AccessUser[]): Promise<DemoCredentials> {
  await mkdir(join(dir, 'secrets'), { recursive: true, mode: 0o700 });
  const passwords = new Map(users.map((u) => [u.username, randomBytes(18).toString('base64url')]));
  for (const [user, pw] of passwords) await writeFile(join(dir, 'secrets', `${user}.password`), pw + '\n', { mode: 0o600 });
  const passwordFile = join(dir, 'passwd');
  await writeFile(passwordFile, [...passwords].map(([u, pw]) => `${u}:${hashPassword(pw)}`).join('\n') + '\n', { mode: 0o600 });
  const accessFile = join(dir, 'access.json');
  await writeFile(accessFile, JSON.stringify({ topicRoot, users }, null, 2) + '\n');
  return {
    auth: { passwordFile, accessFile },
    login: (user) => ({ username: user, passwordFile: join(dir, 'secrets', `${user}.password`) }),
    password: (user) => passwords.get(user)!,
  };
}
