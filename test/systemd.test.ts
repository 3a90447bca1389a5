import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, tempDir } from './helpers.js';
import { AGGREGATOR_NODE_FLAGS } from '../aggregator/node-flags.js';

const dir = join(REPO_ROOT, 'systemd');
const units = readdirSync(dir).filter((f) => f.endsWith('.service'));
const analyze = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' }).error ? null : 'systemd-analyze';

/** key=value lines of a unit's [Service] section (repeated keys: all values). */
function serviceSection(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let inService = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('[')) inService = line === '[Service]';
    else if (inService && line && !line.startsWith('#')) {
      const i = line.indexOf('=');
      out.set(line.slice(0, i), [...(out.get(line.slice(0, i)) ?? []), line.slice(i + 1)]);
    }
  }
  return out;
}

test('systemd units: one per service, dedicated user, restart on failure, state/config directories, hardening, journald', () => {
  assert.deepEqual(units.sort(), [
    'fedline-agent.service',
    'fedline-aggregator.service',
    'fedline-broker.service',
    'fedline-inspect.service',
    'fedline-plant.service',
  ]);
  for (const u of units) {
    const s = serviceSection(readFileSync(join(dir, u), 'utf8'));
    const one = (k: string) => s.get(k)?.[0];
    const name = u.replace(/^fedline-|\.service$/g, '');
    assert.equal(one('User'), 'fedline', u);
    assert.equal(one('Restart'), 'on-failure', u);
    assert.equal(one('ConfigurationDirectory'), 'fedline', u);
    assert.equal(one('StateDirectory'), `fedline/${name}`, u);
    assert.match(one('ExecStart')!, new RegExp(`main\\.js ${name} --config /etc/fedline/`), u);
    for (const [k, v] of [
      ['NoNewPrivileges', 'yes'],
      ['ProtectSystem', 'strict'],
      ['ProtectHome', 'yes'],
      ['PrivateTmp', 'yes'],
      ['RestrictSUIDSGID', 'yes'],
      ['CapabilityBoundingSet', ''],
      ['StandardOutput', 'journal'],
      ['UMask', '0077'],
    ]) {
      assert.equal(one(k), v, `${u}: ${k}=${v}`);
    }
    assert.equal(one('SyslogIdentifier'), `fedline-${name}`);
    assert.match(one('SystemCallFilter')!, /@system-service/);
    if (name === 'agent' || name === 'inspect') assert.ok(!s.has('ProtectClock') && one('PrivateDevices') === 'no', `${u}: the GPU stays reachable`);
    else assert.equal(one('PrivateDevices'), 'yes', u);
  }
  assert.match(readFileSync(join(dir, 'fedline.sysusers.conf'), 'utf8'), /^u fedline - /m);
});

test("the aggregator unit starts node with the aggregator's Node flags (aggregator/node-flags.ts), and node accepts them", () => {
  const s = serviceSection(readFileSync(join(dir, 'fedline-aggregator.service'), 'utf8'));
  const argv = s.get('ExecStart')![0]!.split(/\s+/);
  assert.equal(argv[0], '/usr/bin/node');
  const script = argv.findIndex((a) => a.endsWith('/dist/cli/main.js'));
  assert.deepEqual(argv.slice(1, script), [...AGGREGATOR_NODE_FLAGS]);
  const r = spawnSync(process.execPath, [...AGGREGATOR_NODE_FLAGS, '-e', 'process.stdout.write(JSON.stringify(process.execArgv))'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, '', 'no warning about the flags');
  assert.deepEqual((JSON.parse(r.stdout) as string[]).slice(0, AGGREGATOR_NODE_FLAGS.length), [...AGGREGATOR_NODE_FLAGS]);
});

test(
  'systemd-analyze verify accepts every unit without a warning',
  { skip: analyze ? false : 'systemd-analyze is not installed (systemd); the unit checks above still ran' },
  () => {
    const tmp = tempDir('systemd');
    try {
      // verify checks that ExecStart's program exists: where node is not /usr/bin/node, point it at this node.
      const node = existsSync('/usr/bin/node') ? null : process.execPath;
      const files = units.map((u) => {
        const text = readFileSync(join(dir, u), 'utf8');
        const file = join(tmp.path, u);
        writeFileSync(file, node ? text.replace('ExecStart=/usr/bin/node ', `ExecStart=${node} `) : text);
        return file;
      });
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...files], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'no warnings');
      const sysusers = spawnSync('systemd-sysusers', ['--dry-run', join(dir, 'fedline.sysusers.conf')], { encoding: 'utf8' });
      if (!sysusers.error) assert.equal(sysusers.status, 0, sysusers.stderr);
    } finally {
      tmp.cleanup();
    }
  },
);
