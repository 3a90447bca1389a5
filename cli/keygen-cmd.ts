import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { generateSigningKeys } from '../shared/protocol/model-signature.js';
import { KEYGEN_USAGE } from './usage.js';

/** `fedline keygen --out DIR`: an Ed25519 key pair for signing global models. */
export function runKeygen(args: string[]): void {
  const { values } = parseArgs({ args, options: { out: { type: 'string' }, force: { type: 'boolean', default: false } }, strict: true });
  if (!values.out) {
    process.stderr.write(`fedline keygen: --out DIR is required\n\n${KEYGEN_USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const dir = resolve(values.out);
  const privateFile = join(dir, 'model-signing.key');
  const publicFile = join(dir, 'model-signing.pub');
  if (!values.force && (existsSync(privateFile) || existsSync(publicFile))) {
    process.stderr.write(`fedline keygen: ${privateFile} or ${publicFile} exists; --force replaces them (agents then need the new public key)\n`);
    process.exitCode = 1;
    return;
  }
  mkdirSync(dir, { recursive: true });
  const { privatePem, publicPem } = generateSigningKeys();
  writeFileSync(privateFile, privatePem, { mode: 0o600 });
  chmodSync(privateFile, 0o600);
  writeFileSync(publicFile, publicPem);
  process.stdout.write(`private key (aggregator, keep secret): ${privateFile}\npublic key (every agent):            ${publicFile}\n`);
  process.stdout.write('set "signingKeyFile" in the aggregator config and "modelPublicKeyFile" in each agent config.\n');
}
