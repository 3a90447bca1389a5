import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { silentLogger } from '../shared/util/logger.js';
import { freePort, mosquittoAvailable, REPO_ROOT, tempDir, waitFor } from './helpers.js';

const bin = mosquittoAvailable();
const skip = bin ? false : 'mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)';
const CONF = readFileSync(join(REPO_ROOT, 'mosquitto.conf'), 'utf8');
const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');

/** Debian's /etc/mosquitto/mosquitto.conf (package mosquitto 2.x), its paths moved to `dir`. */
const debianMain = (dir: string) =>
  [
    ...(process.getuid?.() === 0 ? ['user root'] : []),
    `pid_file ${dir}/mosquitto.pid`,
    'persistence true',
    `persistence_location ${dir}/lib/`,
    `log_dest file ${dir}/mosquitto.log`,
    `include_dir ${dir}/conf.d`,
    '',
  ].join('\n');

/** The repository file with only the listener (a free loopback port) and the /etc/mosquitto/ folder moved. */
const fedlineConf = (port: number, etc: string) => CONF.replace(/^listener 1883$/m, `listener ${port} 127.0.0.1`).replaceAll('/etc/mosquitto/', `${etc}/`);

async function runs(args: string[], cwd: string, port: number): Promise<{ proc: ChildProcess; stop(): Promise<number | null> }> {
  const proc = spawn(bin!, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    return exited;
  };
  try {
    // A real login with the example password file and ACL: the broker is up and reads both files.
    const password = readFileSync(join(REPO_ROOT, 'examples', 'secrets', 'aggregator.password'), 'utf8').trim();
    let client: MqttTransport | null = null;
    await waitFor(
      `mosquitto ${args.join(' ')} to accept a login (output: ${out})`,
      async () => {
        if (proc.exitCode !== null) throw new Error(`mosquitto exited with ${proc.exitCode}: ${out}`);
        client = await MqttTransport.connect({
          url: `mqtt://127.0.0.1:${port}`,
          clientId: 'aggregator',
          username: 'aggregator',
          password,
          logger: silentLogger(),
          connectTimeoutMs: 1000,
          reconnectPeriodMs: 0,
        }).catch(() => null);
        return client !== null;
      },
      20_000,
      200,
    );
    await client!.publish('fl/usb-inspection/round/announce', Buffer.from('{}'), { qos: 1, retain: true });
    await client!.close();
  } catch (err) {
    await stop();
    throw err;
  }
  return { proc, stop };
}

test('mosquitto.conf in a Debian-style conf.d next to the main file that sets persistence_location: Mosquitto starts', { skip, timeout: 60_000 }, async () => {
  const dir = tempDir('mosq-confd');
  try {
    mkdirSync(join(dir.path, 'conf.d'));
    mkdirSync(join(dir.path, 'lib'));
    writeFileSync(join(dir.path, 'mosquitto.conf'), debianMain(dir.path));
    const port = await freePort();
    writeFileSync(join(dir.path, 'conf.d', 'fedline.conf'), fedlineConf(port, dir.path));
    copyFileSync(join(REPO_ROOT, 'examples', 'passwd'), join(dir.path, 'fedline.passwd'));
    copyFileSync(join(REPO_ROOT, 'examples', 'mosquitto.acl'), join(dir.path, 'fedline.acl'));
    const broker = await runs(['-c', join(dir.path, 'mosquitto.conf')], dir.path, port);
    await broker.stop();
    assert.ok(existsSync(join(dir.path, 'lib', 'mosquitto.db')), "persistence in the main file's persistence_location");
  } finally {
    dir.cleanup();
  }
});

test('mosquitto.conf standalone (mosquitto -c mosquitto.conf): Mosquitto starts and persists in its folder', { skip, timeout: 60_000 }, async () => {
  const dir = tempDir('mosq-standalone');
  try {
    const port = await freePort();
    const root = process.getuid?.() === 0 ? 'user root\n' : '';
    writeFileSync(join(dir.path, 'mosquitto.conf'), root + fedlineConf(port, dir.path));
    copyFileSync(join(REPO_ROOT, 'examples', 'passwd'), join(dir.path, 'fedline.passwd'));
    copyFileSync(join(REPO_ROOT, 'examples', 'mosquitto.acl'), join(dir.path, 'fedline.acl'));
    const broker = await runs(['-c', 'mosquitto.conf'], dir.path, port);
    await broker.stop();
    assert.ok(existsSync(join(dir.path, 'mosquitto.db')), 'persistence in the folder Mosquitto was started from');
  } finally {
    dir.cleanup();
  }
});

test("the README's Mosquitto file locations are the conf's", () => {
  const confPaths = [...CONF.matchAll(/^(password_file|acl_file)\s+(\S+)/gm)].map((m) => m[2]!);
  assert.deepEqual(confPaths, ['/etc/mosquitto/fedline.passwd', '/etc/mosquitto/fedline.acl']);
  for (const p of [...confPaths, '/etc/mosquitto/conf.d/fedline.conf']) assert.ok(README.includes(p), `README names ${p}`);
  assert.doesNotMatch(CONF, /^persistence_location/m, 'no persistence_location: Debian sets it in the main file');
});
