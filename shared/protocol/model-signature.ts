import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ErrorCodes, FedlineError } from './errors.js';

/**
 * Global models are signed by the aggregator with Ed25519 (RFC 8032), agents verify before they
 * use a model: a model injected by anyone else on the plant network is refused even where the
 * broker lets the message through. The signed message binds the version to the bundle's SHA-256,
 * so an old genuine model cannot be replayed under a new version number:
 *
 *     "fedline-model-v1:" + version + ":" + sha256 (lowercase hex)
 */
function signedText(version: number, sha256: string): Buffer {
  return Buffer.from(`fedline-model-v1:${version}:${sha256}`, 'utf8');
}

export function signModel(privateKey: KeyObject, version: number, sha256: string): string {
  return sign(null, signedText(version, sha256), privateKey).toString('hex');
}

export function verifyModelSignature(publicKey: KeyObject, version: number, sha256: string, signatureHex: string | null): boolean {
  if (!signatureHex || !/^[0-9a-f]{128}$/.test(signatureHex)) return false;
  return verify(null, signedText(version, sha256), publicKey, Buffer.from(signatureHex, 'hex'));
}

/**
 * The released version (`<root>/model/released`) is signed with the same key over its release
 * sequence number, version, SHA-256 and stage, so that neither a candidate's signature (above) nor
 * an older release can be passed off as the current release:
 *
 *     "fedline-release-v1:" + releaseSeq + ":" + version + ":" + sha256 + ":released"
 */
function releaseText(releaseSeq: number, version: number, sha256: string): Buffer {
  return Buffer.from(`fedline-release-v1:${releaseSeq}:${version}:${sha256}:released`, 'utf8');
}

export function signRelease(privateKey: KeyObject, releaseSeq: number, version: number, sha256: string): string {
  return sign(null, releaseText(releaseSeq, version, sha256), privateKey).toString('hex');
}

export function verifyReleaseSignature(publicKey: KeyObject, releaseSeq: number, version: number, sha256: string, signatureHex: string | null): boolean {
  if (!signatureHex || !/^[0-9a-f]{128}$/.test(signatureHex)) return false;
  return verify(null, releaseText(releaseSeq, version, sha256), publicKey, Buffer.from(signatureHex, 'hex'));
}

function loadKey<T extends KeyObject>(file: string, what: string, parse: (pem: string) => T): T {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FedlineError(ErrorCodes.CONFIG_READ, `cannot read the ${what} ${file}: ${(err as Error).message}`, { file });
  }
  let key: T;
  try {
    key = parse(pem);
  } catch (err) {
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `${file} is not a PEM ${what}: ${(err as Error).message}`, { file });
  }
  if (key.asymmetricKeyType !== 'ed25519')
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `${file} holds a ${key.asymmetricKeyType} key; model signing uses Ed25519`, { file });
  return key;
}

export const loadSigningKey = (file: string): KeyObject => loadKey(file, 'Ed25519 private key', (pem) => createPrivateKey(pem));
export const loadVerifyKey = (file: string): KeyObject => loadKey(file, 'Ed25519 public key', (pem) => createPublicKey(pem));

/** A new key pair as PEM (PKCS#8 private, SPKI public), for `fedline keygen`. */
export function generateSigningKeys(): { privatePem: string; publicPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}
