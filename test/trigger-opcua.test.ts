import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { startPlcSimulator, type RunningPlcSim } from '../demo/plc-simulator.js';
import { freeTcpPort } from '../shared/util/free-port.js';
import type { SourceProblem, SourceUpdate } from '../edge-agent/triggers/source.js';
import { OpcuaTriggerSource } from '../edge-agent/triggers/sources/opcua-source.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';
import { parseConfig } from '../shared/config/config-file.js';
import { opcuaSourceSchema, type OpcuaSource } from '../shared/config/trigger-config.js';
import { makeSelfSigned, opensslAvailable } from './certs.js';
import { REPO_ROOT, tempDir, waitFor } from './helpers.js';

function spec(over: Record<string, unknown>): OpcuaSource {
  return parseConfig(
    opcuaSourceSchema,
    {
      type: 'opcua',
      nodeId: 'ns=1;s=Line1.State',
      when: { equals: 'Idle' },
      samplingIntervalMs: 100,
      retryInitialDelayMs: 150,
      retryMaxDelayMs: 1200,
      // A SignAndEncrypt session (RSA key exchange on both sides) took over 4 s under a load average of 17 on 2 cores;
      // a refused port still fails at once, so a generous timeout costs the fault tests nothing.
      connectTimeoutMs: 15_000,
      ...over,
    },
    'test',
  ) as OpcuaSource;
}

function observe(source: OpcuaTriggerSource) {
  const updates: SourceUpdate[] = [];
  const problems: SourceProblem[] = [];
  const started = source.start({ update: (u) => updates.push(u), problem: (p) => problems.push(p) });
  return { updates, problems, started, last: () => updates.at(-1)! };
}

test(
  'OPC UA source on the PLC simulator: Running/Idle schedule, SignAndEncrypt with a user login, certificate store where configured',
  { timeout: 60_000 },
  async () => {
    const dir = tempDir('opcua');
    const port = await freeTcpPort();
    const sim = await startPlcSimulator({
      port,
      pkiDir: join(dir.path, 'sim-pki'),
      schedule: [
        { state: 'Running', durationMs: 700 },
        { state: 'Idle', durationMs: 700 },
      ],
      users: [{ username: 'line-reader', password: 's3cret' }],
    });
    const pkiDir = join(dir.path, 'agent-state', 'opcua-pki');
    const source = new OpcuaTriggerSource({
      spec: spec({
        endpoint: sim.endpoint,
        securityMode: 'SignAndEncrypt',
        securityPolicy: 'Basic256Sha256',
        acceptUnknownServerCertificate: true,
        user: { username: 'line-reader', password: 's3cret' },
      }),
      pkiDir,
      log: silentLogger(),
    });
    const o = observe(source);
    try {
      await o.started;
      // The simulator alternates: the source must see both states, twice, in order.
      const transitions = () => o.updates.filter((u, i) => u.state !== 'unknown' && (i === 0 || o.updates[i - 1]!.state !== u.state)).map((u) => u.state);
      await waitFor('two Running/Idle cycles', () => transitions().length >= 4, 15_000);
      const t = transitions();
      for (let i = 1; i < t.length; i++) assert.notEqual(t[i], t[i - 1]);
      assert.ok(o.updates.some((u) => /= "Idle" \(needs == "Idle"\)/.test(u.detail)));
      assert.deepEqual(o.problems, []);
      assert.ok(
        readdirSync(join(pkiDir, 'own', 'certs')).some((f) => f.endsWith('.pem')),
        'the client certificate lives in the configured store',
      );
      assert.ok(existsSync(join(pkiDir, 'trusted')), 'the server certificate was accepted into the store');
    } finally {
      await source.stop();
      await sim.close();
      dir.cleanup();
    }
  },
);

test(
  'OPC UA faults: unreachable, node id missing, session lost, login refused: unknown state, one report each, retries with back-off, recovery reported',
  { timeout: 90_000 },
  async () => {
    const dir = tempDir('opcua-faults');
    const port = await freeTcpPort();
    const endpoint = `opc.tcp://127.0.0.1:${port}`;
    const pkiDir = join(dir.path, 'pki');
    const sources: OpcuaTriggerSource[] = [];
    let sim: RunningPlcSim | null = null;
    const make = (over: Record<string, unknown>) => {
      const s = new OpcuaTriggerSource({ spec: spec({ endpoint, ...over }), pkiDir, log: silentLogger() });
      sources.push(s);
      return observe(s);
    };
    try {
      // 1. nobody listens on the port yet
      const line = make({});
      await waitFor('unreachable reported', () => line.problems.length > 0, 15_000);
      assert.equal(line.problems[0]!.code, ErrorCodes.OPCUA_UNREACHABLE);
      assert.equal(line.problems[0]!.recovered, false);
      assert.equal(line.last().state, 'unknown');
      await waitFor('a few retries', () => line.updates.filter((u) => /cannot reach/.test(u.detail)).length >= 3, 15_000);
      assert.equal(line.problems.length, 1, 'reported once, not at every retry');

      // 2. the PLC comes up: recovery reported, state known
      sim = await startPlcSimulator({
        port,
        pkiDir: join(dir.path, 'sim-pki'),
        users: [{ username: 'op', password: 'right' }],
        allowAnonymous: true,
        initialState: 'Idle',
      });
      await waitFor('recovered', () => line.last().state === 'open', 20_000);
      assert.deepEqual(
        line.problems.map((p) => [p.code, p.recovered]),
        [
          [ErrorCodes.OPCUA_UNREACHABLE, false],
          [ErrorCodes.OPCUA_UNREACHABLE, true],
        ],
      );

      // 3. a node id the PLC does not have, and a refused login
      const missing = make({ nodeId: 'ns=1;s=Line9.State' });
      const refused = make({ user: { username: 'op', password: 'wrong' } });
      await waitFor('node missing reported', () => missing.problems.length > 0, 15_000);
      assert.equal(missing.problems[0]!.code, ErrorCodes.OPCUA_NODE_MISSING);
      assert.match(missing.problems[0]!.message, /node ns=1;s=Line9.State does not exist/);
      assert.equal(missing.last().state, 'unknown');
      await waitFor('login refusal reported', () => refused.problems.length > 0, 15_000);
      assert.equal(refused.problems[0]!.code, ErrorCodes.OPCUA_SECURITY);
      assert.match(refused.problems[0]!.message, /BadUserAccessDenied/);
      assert.ok(
        refused.updates.every((u) => u.state === 'unknown'),
        'never open without a session',
      );

      // 4. the PLC goes away mid-session: session lost, unknown at once; back: recovered
      sim.set(1, 'Idle');
      await sim.close();
      await waitFor('session lost', () => line.problems.some((p) => p.code === ErrorCodes.OPCUA_SESSION_LOST), 15_000);
      assert.equal(line.last().state, 'unknown', 'no training while the line state is unknown');
      sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Running' });
      await waitFor('back, line running', () => line.last().state === 'closed', 20_000);
      assert.ok(line.problems.at(-1)!.recovered);
    } finally {
      for (const s of sources) await s.stop();
      await sim?.close();
      dir.cleanup();
    }
  },
);

test('an untrusted PLC certificate is refused (FL_OPCUA_SECURITY) until it is moved from rejected/ to trusted/certs/', { timeout: 90_000 }, async () => {
  const dir = tempDir('opcua-trust');
  const port = await freeTcpPort();
  const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
  const pkiDir = join(dir.path, 'pki');
  // A generous connect timeout: SignAndEncrypt handshakes on a loaded CI machine are slow.
  const source = new OpcuaTriggerSource({
    spec: spec({ endpoint: sim.endpoint, securityMode: 'SignAndEncrypt', securityPolicy: 'Basic256Sha256', connectTimeoutMs: 15_000 }),
    pkiDir,
    log: silentLogger(),
  });
  const o = observe(source);
  try {
    await waitFor('refused', () => o.problems.length > 0, 20_000);
    assert.equal(o.problems[0]!.code, ErrorCodes.OPCUA_SECURITY);
    assert.match(o.problems[0]!.message, /BadCertificateUntrusted/);
    assert.ok(o.updates.every((u) => u.state === 'unknown'));
    const rejected = readdirSync(join(pkiDir, 'rejected'));
    assert.equal(rejected.length, 1, 'the PLC certificate waits in rejected/ for a person to decide');
    renameSync(join(pkiDir, 'rejected', rejected[0]!), join(pkiDir, 'trusted', 'certs', rejected[0]!));
    await waitFor('trusted now', () => o.last().state === 'open', 45_000).catch((err: Error) => {
      const folders = ['rejected', join('trusted', 'certs')].map((f) => `${f}: ${readdirSync(join(pkiDir, f)).join(', ')}`).join('; ');
      throw new Error(`${err.message}; problems: ${JSON.stringify(o.problems)}; last update: ${JSON.stringify(o.last())}; ${folders}`);
    });
    assert.ok(o.problems.at(-1)!.recovered);
  } finally {
    await source.stop();
    await sim.close();
    dir.cleanup();
  }
});

test('OPC UA user certificate identity (X.509 user token)', { timeout: 60_000, skip: opensslAvailable() ? false : 'openssl is not installed' }, async () => {
  const dir = tempDir('opcua-x509');
  const port = await freeTcpPort();
  const user = makeSelfSigned(dir.path, 'line-reader');
  const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), users: [{ username: 'nobody', password: 'x' }], initialState: 'Idle' });
  const source = new OpcuaTriggerSource({
    spec: spec({
      endpoint: sim.endpoint,
      securityMode: 'Sign',
      securityPolicy: 'Basic256Sha256',
      acceptUnknownServerCertificate: true,
      userCertificate: { certFile: user.cert, keyFile: user.key },
    }),
    pkiDir: join(dir.path, 'pki'),
    log: silentLogger(),
  });
  const o = observe(source);
  try {
    await waitFor('open with a certificate login', () => o.updates.some((u) => u.state === 'open'), 20_000);
    assert.deepEqual(o.problems, []);
  } finally {
    await source.stop();
    await sim.close();
    dir.cleanup();
  }
});

test('the agent keeps its OPC UA certificate store under its state directory, never under $HOME', { timeout: 60_000 }, async () => {
  const dir = tempDir('opcua-home');
  const home = join(dir.path, 'home');
  mkdirSync(home);
  const port = await freeTcpPort();
  const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
  try {
    // A separate process with an empty HOME builds the gate exactly as the agent does.
    const stateDir = join(dir.path, 'agent-state');
    const script = `
      import { buildGate } from ${JSON.stringify(join(REPO_ROOT, 'dist/edge-agent/triggers/build-gate.js'))};
      import { MemoryHub } from ${JSON.stringify(join(REPO_ROOT, 'dist/shared/transport/memory-transport.js'))};
      import { createTopics } from ${JSON.stringify(join(REPO_ROOT, 'dist/shared/protocol/topics.js'))};
      import { silentLogger } from ${JSON.stringify(join(REPO_ROOT, 'dist/shared/util/logger.js'))};
      const gate = buildGate({ type: 'opcua', endpoint: ${JSON.stringify(sim.endpoint)}, nodeId: 'ns=1;s=Line1.State', when: { equals: 'Idle' }, securityMode: 'None', securityPolicy: 'None', samplingIntervalMs: 100, retryInitialDelayMs: 200, retryMaxDelayMs: 1000, connectTimeoutMs: 5000 },
        { transport: new MemoryHub().connect('a'), topics: createTopics('fl/t'), agentId: 'a', stateDir: ${JSON.stringify(stateDir)}, log: silentLogger() });
      await gate.start();
      const t = setTimeout(() => { console.log('timeout'); process.exit(3); }, 30000);
      gate.on('change', async (s) => { if (s.open) { clearTimeout(t); await gate.stop(); console.log('open'); process.exit(0); } });
      if (gate.open) { await gate.stop(); console.log('open'); process.exit(0); }`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, HOME: home, XDG_CONFIG_HOME: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0, out);
    assert.match(out, /open/);
    assert.ok(
      readdirSync(join(stateDir, 'opcua-pki', 'own', 'certs')).some((f) => f.endsWith('.pem')),
      'client certificate under <stateDir>/opcua-pki',
    );
    assert.deepEqual(readdirSync(home), [], 'nothing written under $HOME');
  } finally {
    await sim.close();
    dir.cleanup();
  }
});
