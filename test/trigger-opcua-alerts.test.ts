import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { startPlcSimulator, type RunningPlcSim } from '../demo/plc-simulator.js';
import { freeTcpPort } from '../shared/util/free-port.js';
import { TriggerGate } from '../edge-agent/triggers/gate.js';
import { pemToDer } from '../edge-agent/triggers/opcua-runtime.js';
import type { SourceProblem, SourceUpdate } from '../edge-agent/triggers/source.js';
import { OpcuaTriggerSource } from '../edge-agent/triggers/sources/opcua-source.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';
import { parseConfig } from '../shared/config/config-file.js';
import { opcuaSourceSchema, type OpcuaSource } from '../shared/config/trigger-config.js';
import { OpcuaRefusingProxy } from './support/opcua-refusing-proxy.js';
import { tempDir, waitFor } from './helpers.js';

/**
 * The OPC UA source's alerts on the PLC simulator: every code opened is closed by its own
 * recovery report, certificate refusals name the file to register or move, and a deleted node, a
 * Bad status and a type that can never match `when` are reported with what was seen.
 */

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
      // Generous: SignAndEncrypt handshakes on a loaded CI machine are slow.
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
  const open = () => {
    const codes = new Set<string>();
    for (const p of problems)
      if (p.recovered) codes.delete(p.code);
      else codes.add(p.code);
    return [...codes];
  };
  return { updates, problems, started, open, last: () => updates.at(-1)! };
}

const pairs = (problems: SourceProblem[]) => problems.map((p) => [p.code, p.recovered] as const);

test('the fault changes during one outage (session lost, then unreachable): both codes are closed when the PLC is back', { timeout: 90_000 }, async () => {
  const dir = tempDir('opcua-outage');
  const port = await freeTcpPort();
  let sim: RunningPlcSim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
  const source = new OpcuaTriggerSource({ spec: spec({ endpoint: sim.endpoint }), pkiDir: join(dir.path, 'pki'), log: silentLogger() });
  const o = observe(source);
  try {
    await waitFor('open', () => o.last().state === 'open', 20_000);
    await sim.close();
    await waitFor('session lost, then unreachable', () => o.open().length === 2, 20_000);
    assert.deepEqual(pairs(o.problems), [
      [ErrorCodes.OPCUA_SESSION_LOST, false],
      [ErrorCodes.OPCUA_UNREACHABLE, false],
    ]);
    sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
    await waitFor('open again', () => o.last().state === 'open', 30_000);
    await waitFor('every alert closed', () => o.open().length === 0, 10_000);
    assert.deepEqual(pairs(o.problems), [
      [ErrorCodes.OPCUA_SESSION_LOST, false],
      [ErrorCodes.OPCUA_UNREACHABLE, false],
      [ErrorCodes.OPCUA_SESSION_LOST, true],
      [ErrorCodes.OPCUA_UNREACHABLE, true],
    ]);
    for (const p of o.problems.filter((x) => x.recovered)) assert.match(p.message, /connected again to opc\.tcp:/);
  } finally {
    await source.stop();
    await sim.close();
    dir.cleanup();
  }
});

test(
  'a PLC that refuses the agent certificate: FL_OPCUA_SECURITY naming the certificate file to register; registering it there works',
  { timeout: 90_000 },
  async () => {
    const dir = tempDir('opcua-plc-refuses');
    const port = await freeTcpPort();
    const simPki = join(dir.path, 'sim-pki');
    const sim = await startPlcSimulator({ port, pkiDir: simPki, initialState: 'Idle', trustUnknownClients: false });
    const pkiDir = join(dir.path, 'pki');
    const source = new OpcuaTriggerSource({
      spec: spec({ endpoint: sim.endpoint, securityMode: 'SignAndEncrypt', securityPolicy: 'Basic256Sha256', acceptUnknownServerCertificate: true }),
      pkiDir,
      log: silentLogger(),
    });
    const o = observe(source);
    try {
      await waitFor('refused', () => o.problems.length > 0, 30_000);
      const p = o.problems[0]!;
      assert.equal(p.code, ErrorCodes.OPCUA_SECURITY);
      assert.match(p.message, /the PLC at opc\.tcp:\S+ refused the agent's certificate \(BadSecurityChecksFailed/);
      const named = /register the agent's certificate (\S+) with the PLC/.exec(p.message)?.[1];
      assert.ok(named, p.message);
      assert.equal(named, join(pkiDir, 'own', 'certs', 'client_certificate.pem'));
      // The file named is the very certificate the PLC refused (it sits in the PLC's rejected store).
      const der = pemToDer(readFileSync(named, 'utf8'), named);
      const refusedAtPlc = readdirSync(join(simPki, 'server', 'rejected')).map((f) => pemToDer(readFileSync(join(simPki, 'server', 'rejected', f), 'utf8'), f));
      assert.ok(
        refusedAtPlc.some((c) => c.equals(der)),
        'the named file holds the certificate the PLC refused',
      );
      assert.ok(o.updates.every((u) => u.state === 'unknown'));
      // A person registers that file with the PLC: the agent gets in and the alert is closed.
      await sim.trustClientCertificate(named);
      await waitFor('trusted by the PLC now', () => o.last().state === 'open', 45_000);
      assert.deepEqual(pairs(o.problems), [
        [ErrorCodes.OPCUA_SECURITY, false],
        [ErrorCodes.OPCUA_SECURITY, true],
      ]);
    } finally {
      await source.stop();
      await sim.close();
      dir.cleanup();
    }
  },
);

test(
  'a PLC that refuses the agent certificate by closing the connection (ERR frame, as C servers do): FL_OPCUA_SECURITY, the whole message',
  { timeout: 60_000 },
  async () => {
    const dir = tempDir('opcua-err-refusal');
    const port = await freeTcpPort();
    const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
    const proxy = await OpcuaRefusingProxy.start(port);
    const pkiDir = join(dir.path, 'pki');
    const source = new OpcuaTriggerSource({
      spec: spec({ endpoint: proxy.endpoint, securityMode: 'Sign', securityPolicy: 'Basic256Sha256', acceptUnknownServerCertificate: true }),
      pkiDir,
      log: silentLogger(),
    });
    const o = observe(source);
    try {
      await waitFor('refused', () => o.problems.length > 0, 30_000);
      assert.ok(proxy.refused >= 1, 'the secured channel was refused');
      const p = o.problems[0]!;
      assert.equal(p.code, ErrorCodes.OPCUA_SECURITY, p.message);
      assert.match(p.message, /refused the agent's certificate \(it closed the connection when the agent opened a secure channel/);
      assert.ok(p.message.includes(join(pkiDir, 'own', 'certs', 'client_certificate.pem')), p.message);
      assert.match(p.message, /Err = \(.*disconnected/, 'the whole message, not its first line');
      assert.ok(!p.message.includes('\n'));
      await waitFor('a few retries', () => o.updates.filter((u) => /refused the agent's certificate/.test(u.detail)).length >= 2, 20_000);
      assert.equal(o.problems.length, 1, 'reported once');
    } finally {
      await source.stop();
      await proxy.close();
      await sim.close();
      dir.cleanup();
    }
  },
);

test('the agent refusing the PLC certificate names the file it put in rejected/; moving that file to trusted/certs/ works', { timeout: 150_000 }, async () => {
  const dir = tempDir('opcua-agent-refuses');
  const port = await freeTcpPort();
  const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
  const pkiDir = join(dir.path, 'pki');
  const source = new OpcuaTriggerSource({
    spec: spec({ endpoint: sim.endpoint, securityMode: 'SignAndEncrypt', securityPolicy: 'Basic256Sha256' }),
    pkiDir,
    log: silentLogger(),
  });
  const o = observe(source);
  try {
    await waitFor('refused', () => o.problems.length > 0, 30_000);
    const p = o.problems[0]!;
    assert.equal(p.code, ErrorCodes.OPCUA_SECURITY);
    assert.match(p.message, /the agent refused the certificate of the PLC at opc\.tcp:\S+ \(BadCertificateUntrusted/);
    const m = /move (\S+\.pem) to (\S+)\/ /.exec(p.message);
    assert.ok(m, p.message);
    const [, file, trusted] = m;
    assert.equal(trusted, join(pkiDir, 'trusted', 'certs'));
    assert.ok(file!.startsWith(join(pkiDir, 'rejected') + '/') && existsSync(file!), `the named file is in rejected/: ${file}`);
    // Doing what the message says lets the agent in.
    renameSync(file!, join(trusted!, file!.slice(file!.lastIndexOf('/') + 1)));
    await waitFor('trusted now', () => o.last().state === 'open', 90_000).catch((err: Error) => {
      const folders = ['rejected', join('trusted', 'certs')].map((f) => `${f}: ${readdirSync(join(pkiDir, f)).join(', ')}`).join('; ');
      throw new Error(`${err.message}; problems: ${JSON.stringify(o.problems)}; last update: ${JSON.stringify(o.last())}; ${folders}`);
    });
    assert.deepEqual(pairs(o.problems), [
      [ErrorCodes.OPCUA_SECURITY, false],
      [ErrorCodes.OPCUA_SECURITY, true],
    ]);
  } finally {
    await source.stop();
    await sim.close();
    dir.cleanup();
  }
});

test(
  'during a live subscription: a Bad status and a deleted node raise alerts naming what was seen; a Good value closes them',
  { timeout: 90_000 },
  async () => {
    const dir = tempDir('opcua-node-faults');
    const port = await freeTcpPort();
    const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
    const source = new OpcuaTriggerSource({ spec: spec({ endpoint: sim.endpoint }), pkiDir: join(dir.path, 'pki'), log: silentLogger() });
    const o = observe(source);
    try {
      await waitFor('open', () => o.last().state === 'open', 20_000);

      sim.setStatus(1, 'BadSensorFailure');
      await waitFor('Bad status reported', () => o.problems.length === 1, 15_000);
      const bad = o.problems[0]!;
      assert.equal(bad.code, ErrorCodes.OPCUA_BAD_STATUS);
      assert.equal(bad.recovered, false);
      assert.match(bad.message, /ns=1;s=Line1\.State on opc\.tcp:\S+ reports status BadSensorFailure/);
      assert.equal(o.last().state, 'unknown', 'no training on a Bad value');
      sim.set(1, 'Idle');
      await waitFor('Good again', () => o.open().length === 0 && o.last().state === 'open', 15_000);
      assert.match(o.problems.at(-1)!.message, /reports a Good value again: "Idle" \(String\)/);

      sim.deleteState(1);
      await waitFor('deletion reported', () => o.open().length === 1, 15_000);
      const gone = o.problems.at(-1)!;
      assert.equal(gone.code, ErrorCodes.OPCUA_NODE_MISSING);
      assert.match(gone.message, /node ns=1;s=Line1\.State was deleted from opc\.tcp:\S+ during the subscription \(BadNodeId(Invalid|Unknown)\)/);
      assert.equal(o.last().state, 'unknown');
      await waitFor('retried while missing', () => o.updates.filter((u) => /does not exist/.test(u.detail)).length >= 2, 15_000);
      assert.equal(o.problems.length, 3, 'reported once while the node stays missing');

      sim.restoreState(1);
      await waitFor('the node is back', () => o.open().length === 0 && o.last().state === 'open', 30_000);
      assert.deepEqual(pairs(o.problems), [
        [ErrorCodes.OPCUA_BAD_STATUS, false],
        [ErrorCodes.OPCUA_BAD_STATUS, true],
        [ErrorCodes.OPCUA_NODE_MISSING, false],
        [ErrorCodes.OPCUA_NODE_MISSING, true],
      ]);
    } finally {
      await source.stop();
      await sim.close();
      dir.cleanup();
    }
  },
);

test('an Int32 variable against equals "Idle" is reported at once with its type and value, and the window never opens', { timeout: 60_000 }, async () => {
  const dir = tempDir('opcua-type');
  const port = await freeTcpPort();
  const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
  const wrong = new OpcuaTriggerSource({
    spec: spec({ endpoint: sim.endpoint, nodeId: 'ns=1;s=Line1.StateCode' }),
    pkiDir: join(dir.path, 'pki'),
    log: silentLogger(),
  });
  const right = new OpcuaTriggerSource({
    spec: spec({ endpoint: sim.endpoint, nodeId: 'ns=1;s=Line1.StateCode', when: { equals: 4 } }),
    pkiDir: join(dir.path, 'pki'),
    log: silentLogger(),
  });
  const gate = new TriggerGate({ kind: 'source', id: wrong.id }, [wrong]);
  const problems: SourceProblem[] = [];
  gate.on('problem', (p: SourceProblem) => problems.push(p));
  const r = observe(right);
  try {
    await gate.start();
    await waitFor('type reported', () => problems.length > 0, 20_000);
    const p = problems[0]!;
    assert.equal(p.code, ErrorCodes.OPCUA_VALUE_TYPE);
    assert.match(p.message, /ns=1;s=Line1\.StateCode = 4 \(Int32\) on opc\.tcp:\S+: a value of this type can never satisfy when \(needs == "Idle"\)/);
    assert.equal(gate.snapshot().state, 'closed');
    assert.match(gate.snapshot().detail, /= 4 \(Int32\) can never satisfy when/);
    // A round due in an hour is given up now, not waited on.
    const plan = gate.plan(Date.now() + 3_600_000);
    assert.equal(plan.action, 'give-up');
    assert.match((plan as { reason: string }).reason, /never opens/);
    // The same variable with a numeric condition works: the alert is about the type, not the variable.
    await waitFor('a numeric condition opens', () => r.last().state === 'open', 20_000);
    assert.deepEqual(r.problems, []);
    sim.set(1, 'Running');
    await waitFor('closed on 6', () => r.last().state === 'closed', 10_000);
    assert.equal(problems.length, 1, 'reported once, not at every value');
  } finally {
    await gate.stop();
    await right.stop();
    await sim.close();
    dir.cleanup();
  }
});
