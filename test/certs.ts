import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** openssl is in Debian's base system; .ci/run installs it where it is missing. */
export function opensslAvailable(): boolean {
  return !spawnSync('openssl', ['version']).error;
}

function openssl(args: string[], cwd: string): void {
  // node-opcua-pki sets OPENSSL_CONF and RANDFILE in process.env (sometimes to "undefined") once
  // it has run in this process: give openssl a clean environment.
  const { OPENSSL_CONF: _conf, RANDFILE: _rand, ...env } = process.env;
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8', env });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

export interface TestPki {
  ca: string;
  server: { cert: string; key: string };
  clients: Record<string, { cert: string; key: string }>;
}

/**
 * A throw-away certificate authority for the TLS tests: a CA, a server certificate for
 * 127.0.0.1 / localhost, and one client certificate per common name (the broker takes the CN as
 * the user name when client certificates are required).
 */
export function makeTestPki(dir: string, clientNames: string[]): TestPki {
  const days = ['-days', '2'];
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.pem',
      ...days,
      '-subj',
      '/CN=fedline test CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  const issue = (name: string, cn: string, ext: string) => {
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`], dir);
    writeFileSync(join(dir, `${name}.ext`), ext);
    openssl(
      ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, ...days, '-extfile', `${name}.ext`],
      dir,
    );
    return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
  };
  const server = issue(
    'server',
    'localhost',
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n',
  );
  const clients: TestPki['clients'] = {};
  for (const name of clientNames)
    clients[name] = issue(`client-${name}`, name, 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment,nonRepudiation,dataEncipherment\n');
  return { ca: join(dir, 'ca.pem'), server, clients };
}

/** A self-signed certificate and key (e.g. an OPC UA user identity the simulator accepts on first use). */
export function makeSelfSigned(dir: string, cn: string): { cert: string; key: string } {
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${cn}.key`,
      '-out',
      `${cn}.pem`,
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'keyUsage=digitalSignature,nonRepudiation,keyEncipherment,dataEncipherment',
      '-addext',
      'extendedKeyUsage=clientAuth',
    ],
    dir,
  );
  return { cert: join(dir, `${cn}.pem`), key: join(dir, `${cn}.key`) };
}
