import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startPlcSimulator, type RunningPlcSim } from '../demo/plc-simulator.js';
import { freeTcpPort } from '../shared/util/free-port.js';
import { startAggregator } from '../aggregator/main.js';
import type { RoundWorkResult } from '../edge-agent/agent.js';
import { startAgent } from '../edge-agent/main.js';
import { agentConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';
import { agentConfig, aggregatorConfig, captureLogger, startAedes, tempDir, tinyDataset, waitFor, type FederationOptions } from './helpers.js';
import { mesObserver } from './mes-observer.js';

/**
 * What the MES sees of an agent's OPC UA faults: every `warning` alert is followed by an `info`
 * with the same code when it works again (none stays open), each matches the documented schema,
 * a type that can never match gives up the round at once, and epochs and batches read the same
 * (numbered from 1) in the agent's log, its status and its events.
 */

type Alert = { severity: string; code: string; message: string; agent?: string };

/** Codes with a warning not yet followed by an info of the same code. */
function openAlerts(alerts: Alert[]): string[] {
  const open = new Set<string>();
  for (const a of alerts)
    if (a.severity === 'info') open.delete(a.code);
    else open.add(a.code);
  return [...open];
}

const trigger = (sim: RunningPlcSim, over: Record<string, unknown> = {}) => ({
  type: 'opcua',
  endpoint: sim.endpoint,
  nodeId: sim.nodeId(1),
  when: { equals: 'Idle' },
  samplingIntervalMs: 100,
  retryInitialDelayMs: 200,
  retryMaxDelayMs: 1500,
  ...over,
});

test(
  'alerts at the MES: an outage with two codes, a Bad status and a deleted node: every warning closed by an info of its code',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('agent-opcua-alerts');
    const broker = await startAedes();
    const port = await freeTcpPort();
    let sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
    const mes = await mesObserver(broker.url);
    const o: FederationOptions = { url: broker.url, dir: dir.path, agents: ['site-a'], rounds: 1 };
    // No round runs here, but an agent refuses to start without its image folder.
    await tinyDataset(join(dir.path, 'data'), o.agents);
    const agent = await startAgent(parseConfig(agentConfigSchema, { ...agentConfig(o, 'site-a'), trigger: trigger(sim) }, 'site-a'), silentLogger());
    const alerts = () => mes.ofType('alert') as unknown as Alert[];
    try {
      await waitFor('window open', () => mes.last('site-a')?.window?.state === 'open', 30_000);
      // 1. The PLC goes away and stays away: session lost, then unreachable.
      await sim.close();
      await waitFor('two codes open', () => openAlerts(alerts()).length === 2, 30_000);
      assert.deepEqual(openAlerts(alerts()), [ErrorCodes.OPCUA_SESSION_LOST, ErrorCodes.OPCUA_UNREACHABLE]);
      sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
      await waitFor('both closed', () => alerts().length === 4 && openAlerts(alerts()).length === 0, 30_000);
      // 2. A Bad status, then the node deleted and added back.
      sim.setStatus(1, 'BadOutOfService');
      await waitFor('Bad status alert', () => openAlerts(alerts()).includes(ErrorCodes.OPCUA_BAD_STATUS), 20_000);
      sim.set(1, 'Idle');
      await waitFor('Bad status closed', () => openAlerts(alerts()).length === 0, 20_000);
      sim.deleteState(1);
      await waitFor('node missing alert', () => openAlerts(alerts()).includes(ErrorCodes.OPCUA_NODE_MISSING), 20_000);
      sim.restoreState(1);
      await waitFor('node missing closed, window open', () => openAlerts(alerts()).length === 0 && mes.last('site-a')?.window?.state === 'open', 30_000);

      const seen = alerts().map((a) => [a.code, a.severity]);
      assert.deepEqual(seen, [
        [ErrorCodes.OPCUA_SESSION_LOST, 'warning'],
        [ErrorCodes.OPCUA_UNREACHABLE, 'warning'],
        [ErrorCodes.OPCUA_SESSION_LOST, 'info'],
        [ErrorCodes.OPCUA_UNREACHABLE, 'info'],
        [ErrorCodes.OPCUA_BAD_STATUS, 'warning'],
        [ErrorCodes.OPCUA_BAD_STATUS, 'info'],
        [ErrorCodes.OPCUA_NODE_MISSING, 'warning'],
        [ErrorCodes.OPCUA_NODE_MISSING, 'info'],
      ]);
      const bad = alerts().find((a) => a.code === ErrorCodes.OPCUA_BAD_STATUS)!;
      assert.match(bad.message, /ns=1;s=Line1\.State .*status BadOutOfService/);
      assert.ok(alerts().every((a) => a.agent === 'site-a'));
      assert.deepEqual(mes.invalid, [], 'every alert and its closing info match the documented schema');
    } finally {
      await agent.close();
      await mes.close();
      await sim.close();
      await broker.close();
      dir.cleanup();
    }
  },
);

test(
  'an Int32 line state against equals "Idle": the MES gets FL_OPCUA_VALUE_TYPE with type and value, and the round is given up at once',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('agent-opcua-type');
    const broker = await startAedes();
    const port = await freeTcpPort();
    const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
    const mes = await mesObserver(broker.url);
    // A deadline far beyond the test's waits: giving up must not wait for it.
    const o: FederationOptions = { url: broker.url, dir: dir.path, agents: ['site-a'], rounds: 1, roundDeadlineMs: 600_000 };
    await tinyDataset(join(dir.path, 'data'), o.agents);
    const aggregator = await startAggregator(aggregatorConfig(o), silentLogger());
    const agent = await startAgent(
      parseConfig(agentConfigSchema, { ...agentConfig(o, 'site-a'), trigger: trigger(sim, { nodeId: 'ns=1;s=Line1.StateCode' }) }, 'site-a'),
      silentLogger(),
    );
    const results: RoundWorkResult[] = [];
    agent.agent.on('round-done', (r: RoundWorkResult) => results.push(r));
    const alerts = () => mes.ofType('alert') as unknown as Alert[];
    try {
      const run = aggregator.aggregator.run();
      run.catch(() => undefined);
      await waitFor('the type alert', () => alerts().some((a) => a.code === ErrorCodes.OPCUA_VALUE_TYPE), 30_000);
      const typeAlert = alerts().find((a) => a.code === ErrorCodes.OPCUA_VALUE_TYPE)!;
      assert.equal(typeAlert.severity, 'warning');
      assert.match(typeAlert.message, /ns=1;s=Line1\.StateCode = 4 \(Int32\) .*can never satisfy when \(needs == "Idle"\)/);
      await waitFor('round 1 given up', () => results.some((r) => r.round === 1), 60_000);
      assert.equal(results[0]!.outcome, 'skipped');
      const missed = alerts().find((a) => a.code === ErrorCodes.WINDOW_MISSED);
      assert.ok(missed, 'FL_WINDOW_MISSED at once');
      assert.match(missed.message, /never opens/);
      assert.ok(!mes.updates.some((u) => u.agent === 'site-a'), 'no evaluation, no training');
      assert.deepEqual(mes.invalid, []);
    } finally {
      await agent.close();
      await aggregator.close();
      await mes.close();
      await sim.close();
      await broker.close();
      dir.cleanup();
    }
  },
);

test('epochs and batches are numbered from 1, the same in the log, the status and the events', { timeout: 180_000 }, async () => {
  const dir = tempDir('agent-numbering');
  const broker = await startAedes();
  const port = await freeTcpPort();
  const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Idle' });
  const mes = await mesObserver(broker.url);
  const o: FederationOptions = {
    url: broker.url,
    dir: dir.path,
    agents: ['site-a'],
    rounds: 1,
    aggregator: {
      evaluateFinalModel: false,
      task: {
        epochs: 12,
        batchSize: 4,
        learningRate: 0.005,
        learningRateDecay: 1,
        optimizer: 'adam',
        classWeighting: 'auto',
        sampling: 'shuffle',
        federated: 'all',
      },
    },
  };
  await tinyDataset(join(dir.path, 'data'), o.agents);
  const aggregator = await startAggregator(aggregatorConfig(o), silentLogger());
  const log = captureLogger();
  const agent = await startAgent(parseConfig(agentConfigSchema, { ...agentConfig(o, 'site-a'), trigger: trigger(sim) }, 'site-a'), log.logger);
  try {
    const run = aggregator.aggregator.run();
    await waitFor('training with progress', () => mes.last('site-a')?.state === 'training' && (mes.last('site-a')!.progress ?? 0) > 0.05, 60_000);
    const progress = mes.last('site-a')!;
    const [, pe, pb] = /^epoch (\d+)\/12, batch (\d+)\/(\d+)/.exec(progress.detail ?? '') ?? [];
    assert.ok(pe && pb, progress.detail ?? '');
    assert.ok(Number(pe) >= 1 && Number(pb) >= 1, `progress counts from 1: ${progress.detail}`);
    sim.set(1, 'Running');
    await waitFor('paused', () => mes.last('site-a')?.state === 'paused', 30_000);
    const paused = mes.last('site-a')!;
    const [, e, b, per] = /^paused before epoch (\d+)\/12, batch (\d+)\/(\d+)/.exec(paused.detail ?? '') ?? [];
    assert.ok(e && b && per, paused.detail ?? '');
    // Progress is what was done: before batch b of epoch e, (e-1) epochs and b-1 batches are.
    assert.ok(
      Math.abs(paused.progress! - ((Number(e) - 1) * Number(per) + Number(b) - 1) / (12 * Number(per))) < 1e-9,
      `${paused.progress} at ${paused.detail}`,
    );
    await waitFor('paused logged', () => log.lines.some((l) => /training paused/.test(String(l.msg))), 10_000);
    const logged = log.lines.find((l) => /training paused/.test(String(l.msg)))!;
    assert.deepEqual([logged.epoch, logged.batch], [Number(e), Number(b)], 'the log says the same epoch and batch as the status');
    await waitFor('paused event', () => mes.ofType('agent-state').some((ev) => ev.state === 'paused'), 10_000);
    assert.equal(mes.ofType('agent-state').find((ev) => ev.state === 'paused')!.detail, paused.detail);
    sim.set(1, 'Idle');
    await waitFor('resumed', () => log.lines.some((l) => /training resumed/.test(String(l.msg))), 30_000);
    const resumedLog = log.lines.find((l) => /training resumed/.test(String(l.msg)))!;
    assert.deepEqual([resumedLog.epoch, resumedLog.batch], [Number(e), Number(b)]);
    await waitFor(
      'resumed status',
      () => mes.of('site-a').some((s) => s.detail?.startsWith(`resumed at epoch ${e}/12, batch ${b}/${per} (step `) === true),
      10_000,
    );
    const result = await run;
    assert.equal(result.rounds[0]!.outcome, 'aggregate');
    assert.deepEqual(mes.invalid, []);
  } finally {
    await agent.close();
    await aggregator.close();
    await mes.close();
    await sim.close();
    await broker.close();
    dir.cleanup();
  }
});
