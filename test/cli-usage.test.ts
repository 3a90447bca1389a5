import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { COMMAND_USAGE, ExitCodes } from '../cli/usage.js';
import { REPO_ROOT, tempDir } from './helpers.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');

function fedline(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FEDLINE_LOG_LEVEL: 'info' } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out, err }));
  });
}

const COMMANDS = [
  ['demo'],
  ['broker'],
  ['aggregator'],
  ['agent'],
  ['plant'],
  ['inspect'],
  ['plc-sim'],
  ['passwd'],
  ['acl'],
  ['classify'],
  ['model-info'],
  ['pretrain'],
  ['dataset'],
  ['dataset', 'synth'],
  ['experiment'],
  ['keygen'],
  ['dashboard'],
  ['models'],
  ['release'],
  ['rollback'],
];

test('every command and subcommand answers --help and -h on stdout with exit code 0', async () => {
  assert.deepEqual(Object.keys(COMMAND_USAGE).sort(), [...new Set(COMMANDS.map((c) => c[0]!))].sort(), 'every command in the table is tried');
  for (const cmd of COMMANDS) {
    for (const flag of ['--help', '-h']) {
      const r = await fedline([...cmd, flag]);
      assert.equal(r.code, 0, `${cmd.join(' ')} ${flag}: ${r.err}`);
      assert.match(r.out, new RegExp(`fedline ${cmd[0]}`), `${cmd.join(' ')} ${flag} prints its usage`);
      assert.match(r.out, /usage|options/);
      assert.equal(r.err, '');
    }
  }
  for (const args of [[], ['--help'], ['-h'], ['help']]) {
    const r = await fedline(args);
    assert.equal(r.code, 0);
    assert.match(r.out, /usage: fedline <command>/);
    assert.match(r.out, /exit codes:\n {2}0 .*\n {2}1 .*\n {2}2 .*usage error/, 'the exit codes are in the top-level usage');
  }
});

test('--version prints the package version', async () => {
  const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V']) {
    const r = await fedline([flag]);
    assert.equal(r.code, 0);
    assert.equal(r.out.trim(), `fedline ${version}`);
  }
});

test('unknown and malformed options: exit code 2, the message and the valid options on stderr', async () => {
  const dir = tempDir('cli-usage');
  try {
    const brokerConfig = join(dir.path, 'broker.json');
    writeFileSync(brokerConfig, JSON.stringify({ port: 0, allowAnonymous: true }));
    const cases: { args: string[]; message: RegExp; valid: string[] }[] = [
      {
        args: ['broker', '--config', brokerConfig, '--port', 'abc'],
        message: /--port must be an integer from 0 to 65535, got "abc"/,
        valid: ['--config', '--port'],
      },
      { args: ['broker', '--config', brokerConfig, '--port', '70000'], message: /--port must be an integer/, valid: ['--port'] },
      { args: ['broker', '--bogus'], message: /Unknown option '--bogus'/, valid: ['--config', '--port', '--help'] },
      { args: ['aggregator'], message: /--config FILE is required/, valid: ['--config'] },
      { args: ['agent', '--config'], message: /--config/, valid: ['--config'] },
      { args: ['demo', '--rounds', 'many'], message: /--rounds must be an integer/, valid: ['--rounds', '--out', '--model'] },
      { args: ['demo', '--frobnicate'], message: /Unknown option '--frobnicate'/, valid: ['--rounds'] },
      { args: ['plc-sim', '--port', '99999'], message: /--port must be an integer/, valid: ['--schedule', '--lines'] },
      { args: ['classify', '--nope'], message: /Unknown option '--nope'/, valid: ['--model', '--json'] },
      { args: ['model-info', '--colour'], message: /Unknown option '--colour'/, valid: ['--model', '--size'] },
      { args: ['experiment', '--mode'], message: /--mode/, valid: ['--config', '--out', '--mode'] },
      { args: ['dataset', 'synth', '--bogus'], message: /Unknown option '--bogus'/, valid: ['--out', '--parts'] },
      { args: ['dataset', 'synth', '--out', dir.path, '--size', '3'], message: /--size must be an integer from 16 to 512/, valid: ['--size'] },
      { args: ['pretrain', '--bogus'], message: /Unknown option '--bogus'/, valid: ['--data', '--synth'] },
      { args: ['passwd', '--file', join(dir.path, 'p')], message: /--user NAME are required/, valid: ['--file', '--user'] },
      { args: ['acl'], message: /--access ACCESS.json is required/, valid: ['--access', '--out'] },
      { args: ['keygen', '--bogus'], message: /Unknown option '--bogus'/, valid: ['--out', '--force'] },
    ];
    for (const c of cases) {
      const r = await fedline(c.args);
      assert.equal(r.code, ExitCodes.USAGE, `${c.args.join(' ')}: ${r.err}`);
      assert.match(r.err, c.message, c.args.join(' '));
      assert.doesNotMatch(r.err, /NaN|should be >= 0|To specify a positional argument/, `${c.args.join(' ')}: no raw Node.js message`);
      const valid = /valid options: (.*)/.exec(r.err)?.[1]?.split(' ') ?? [];
      for (const v of c.valid) assert.ok(valid.includes(v), `${c.args.join(' ')}: "valid options" names ${v}: ${r.err}`);
    }
    const unknown = await fedline(['frobnicate']);
    assert.equal(unknown.code, ExitCodes.USAGE);
    assert.match(unknown.err, /unknown command "frobnicate"/);
  } finally {
    dir.cleanup();
  }
});

test('a config that cannot be read or is invalid: exit code 3 with the file named', async () => {
  const dir = tempDir('cli-config');
  try {
    const missing = await fedline(['aggregator', '--config', join(dir.path, 'nope.json')]);
    assert.equal(missing.code, ExitCodes.CONFIG);
    assert.match(missing.err, /cannot read configuration file .*nope\.json/);
    const bad = join(dir.path, 'broker.json');
    writeFileSync(bad, JSON.stringify({ port: 'abc' }));
    const invalid = await fedline(['broker', '--config', bad]);
    assert.equal(invalid.code, ExitCodes.CONFIG, invalid.err);
    assert.match(invalid.err, /broker\.json/);
  } finally {
    dir.cleanup();
  }
});

test('an agent whose data folder is missing stops at start: exit code 3, FL_DATA, the folder named', async () => {
  const dir = tempDir('cli-data');
  try {
    const config = join(dir.path, 'agent.json');
    writeFileSync(
      config,
      JSON.stringify({ agentId: 'site-x', federation: 'f', mqtt: { url: 'mqtt://127.0.0.1:9' }, stateDir: './state', data: { dir: './no-such-images' } }),
    );
    const r = await fedline(['agent', '--config', config]);
    assert.equal(r.code, ExitCodes.CONFIG, r.err);
    assert.match(r.err, /data\.dir .*no-such-images does not exist/);
    const fatalLine = r.out
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === 'fatal error');
    assert.equal(fatalLine?.code, 'FL_DATA');
  } finally {
    dir.cleanup();
  }
});
