import { readFileSync, writeFileSync, existsSync, chmodSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { AccessPolicy, accessFileSchema, renderMosquittoAcl } from '../broker/access.js';
import { DEFAULT_PBKDF2_ITERATIONS, PasswordFile, setPasswordLine } from '../broker/passwords.js';
import { loadConfigFile } from '../shared/config/config-file.js';
import { invalidOption } from './option-checks.js';

import { ACL_USAGE, PASSWD_USAGE } from './usage.js';

export { ACL_USAGE, PASSWD_USAGE };

async function readStdinLine(): Promise<string> {
  if (process.stdin.isTTY) throw invalidOption('give the password on standard input (not a terminal) or with --password-file');
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '';
}

export async function runPasswd(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      file: { type: 'string' },
      user: { type: 'string' },
      'password-file': { type: 'string' },
      iterations: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(PASSWD_USAGE + '\n');
    return;
  }
  if (!values.file || !values.user) throw invalidOption('--file FILE and --user NAME are required');
  const iterations = values.iterations ? Number(values.iterations) : DEFAULT_PBKDF2_ITERATIONS;
  if (!Number.isInteger(iterations) || iterations < 1000) throw invalidOption(`--iterations must be an integer >= 1000, got "${values.iterations}"`);
  const password = values['password-file'] ? readFileSync(values['password-file'], 'utf8').split(/\r?\n/)[0]! : await readStdinLine();
  if (password.length < 8) throw invalidOption('the password must have at least 8 characters');
  const existing = existsSync(values.file) ? readFileSync(values.file, 'utf8') : '';
  if (existing) PasswordFile.parse(existing, values.file); // refuse to extend a file that is already broken
  writeFileSync(values.file, setPasswordLine(existing, values.user, password, iterations), { mode: 0o600 });
  chmodSync(values.file, 0o600);
  process.stdout.write(`${values.file}: password of "${values.user}" set\n`);
}

export async function runAcl(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { access: { type: 'string' }, out: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true });
  if (values.help) {
    process.stdout.write(ACL_USAGE + '\n');
    return;
  }
  if (!values.access) throw invalidOption('--access ACCESS.json is required');
  const policy = new AccessPolicy(loadConfigFile(accessFileSchema, values.access));
  const text = renderMosquittoAcl(policy, values.access);
  if (values.out) writeFileSync(values.out, text);
  else process.stdout.write(text);
}
