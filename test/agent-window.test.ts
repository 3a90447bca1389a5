import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pino } from 'pino';
import { startPlcSimulator } from '../demo/plc-simulator.js';
import { freeTcpPort } from '../shared/util/free-port.js';
import { startAggregator } from '../aggregator/main.js';
import type { RoundWorkResult } from '../edge-agent/agent.js';
import { startAgent, type RunningAgent } from '../edge-agent/main.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import { agentConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { agentConfig, aggregatorConfig, startAedes, tempDir, tinyDataset, waitFor, type FederationOptions } from './helpers.js';
import { mesObserver } from './mes-observer.js';

test(
  'OPC UA training window: the agent waits while the line runs, pauses at a batch boundary when it starts again, resumes and delivers',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('agent-window');
    const broker = await startAedes();
    const port = await freeTcpPort();
    const sim = await startPlcSimulator({ port, pkiDir: join(dir.path, 'sim-pki'), initialState: 'Running' });
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
    const trigger = {
      type: 'opcua',
      endpoint: sim.endpoint,
      nodeId: sim.nodeId(1),
      when: { equals: 'Idle' },
      samplingIntervalMs: 100,
      retryInitialDelayMs: 200,
    };
    const agent = await startAgent(parseConfig(agentConfigSchema, { ...agentConfig(o, 'site-a'), trigger }, 'site-a'), silentLogger());
    const results: RoundWorkResult[] = [];
    agent.agent.on('round-done', (r: RoundWorkResult) => results.push(r));
    try {
      const run = aggregator.aggregator.run();
      // 1. The round is open but the line runs: the agent waits, reports why, and does no compute work.
      // (Before the OPC UA session is up the window is closed too, with "connecting to ..." as the reason.)
      await waitFor(
        'waiting-window because the line runs',
        () => mes.last('site-a')?.state === 'waiting-window' && /Running/.test(mes.last('site-a')!.detail ?? ''),
        30_000,
      );
      assert.match(mes.last('site-a')!.detail!, /training window closed: .*ns=1;s=Line1.State = "Running" \(needs == "Idle"\)/);
      assert.equal(mes.last('site-a')!.window?.state, 'closed');
      await new Promise((r) => setTimeout(r, 500));
      assert.deepEqual(
        mes.updates.filter((u) => u.agent === 'site-a'),
        [],
        'no evaluation, no training before the window opens',
      );

      // 2. Idle: evaluate, train. Running again mid-training: paused at a batch boundary, progress kept.
      sim.set(1, 'Idle');
      await waitFor('training with progress', () => mes.last('site-a')?.state === 'training' && (mes.last('site-a')!.progress ?? 0) > 0.05, 30_000);
      sim.set(1, 'Running');
      await waitFor('paused', () => mes.last('site-a')?.state === 'paused', 10_000);
      const paused = mes.last('site-a')!;
      assert.ok(paused.progress! > 0 && paused.progress! < 1, `progress kept while paused: ${paused.progress}`);
      assert.match(paused.detail!, /^paused before epoch \d+\/12, batch \d+\/\d+ \(step \d+\/\d+\): .*"Running"/);
      // The event travels on its own topic: it may land just after the status.
      await waitFor('an agent-state event says paused', () => mes.events.some((e) => e.event.type === 'agent-state' && e.event.state === 'paused'), 10_000);
      const pausedEvent = mes.events.find((e) => e.event.type === 'agent-state' && e.event.state === 'paused')!;
      assert.equal(pausedEvent.topic, 'fl/test/events/agent-state/site-a', "an agent's events carry its id as the last topic level");
      const statusesWhilePaused = mes.of('site-a').length;
      await new Promise((r) => setTimeout(r, 800));
      assert.equal(mes.of('site-a').length, statusesWhilePaused, 'no training progress while paused');

      // 3. Idle again: resumed from the same batch, the update is delivered and aggregated.
      sim.set(1, 'Idle');
      const result = await run;
      assert.equal(result.rounds[0]!.outcome, 'aggregate');
      assert.deepEqual(result.rounds[0]!.participants, ['site-a']);
      await waitFor('round-done', () => results.length > 0);
      assert.equal(results[0]!.outcome, 'accepted');
      const states = mes
        .of('site-a')
        .map((s) => s.state)
        .filter((s, i, a) => i === 0 || a[i - 1] !== s);
      const from = states.indexOf('waiting-window');
      assert.deepEqual(states.slice(from, from + 6), ['waiting-window', 'evaluating', 'training', 'paused', 'training', 'uploading']);
      assert.deepEqual(mes.invalid, [], 'every event matches its documented schema');
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

test(
  'windows across rounds: paused work of a closed round is dropped and the agent joins the next; a window that cannot open before the deadline is reported at once',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('agent-window-rounds');
    const broker = await startAedes();
    const mes = await mesObserver(broker.url);
    const mesLine = await MqttTransport.connect({ url: broker.url, clientId: 'mes-line', logger: silentLogger() });
    const o: FederationOptions = {
      url: broker.url,
      dir: dir.path,
      agents: ['site-a', 'site-b', 'site-c'],
      rounds: 2,
      minClients: 1,
      // Rounds 1 and 2 can only close at the deadline (site-c never trains, site-a is paused in round 1): it must leave site-b
      // time for 12 epochs on a loaded machine (6 s failed under a load average of 16 on 2 cores).
      roundDeadlineMs: 15_000,
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
    // site-c's only window is 12 hours away: it can never train within a 6 s round.
    const h = (new Date().getUTCHours() + 12) % 24;
    const farWindow = `${String(h).padStart(2, '0')}:00-${String(h).padStart(2, '0')}:30`;
    const triggers: Record<string, unknown> = {
      'site-a': { type: 'mqtt', topic: 'mes/line-a/state', path: '$.state', when: { equals: 'Idle' } },
      'site-b': { type: 'always' },
      'site-c': { type: 'schedule', windows: [farWindow], timeZone: 'UTC' },
    };
    await mesLine.publish('mes/line-a/state', encodeJson({ state: 'Idle' }), { retain: true });
    const aggregator = await startAggregator(aggregatorConfig(o), silentLogger());
    const agents: RunningAgent[] = [];
    const results = new Map<string, RoundWorkResult[]>();
    for (const id of o.agents) {
      const a = await startAgent(parseConfig(agentConfigSchema, { ...agentConfig(o, id), trigger: triggers[id] }, id), pino({ level: 'silent' }));
      results.set(id, []);
      a.agent.on('round-done', (r: RoundWorkResult) => results.get(id)!.push(r));
      agents.push(a);
    }
    try {
      const run = aggregator.aggregator.run();
      // Round 1: site-a starts training, then the MES says the line runs: paused until the round closes.
      await waitFor('site-a training in round 1', () => mes.last('site-a')?.state === 'training' && mes.last('site-a')?.round === 1, 30_000);
      await mesLine.publish('mes/line-a/state', encodeJson({ state: 'Running' }), { retain: true });
      await waitFor('site-a paused', () => mes.last('site-a')?.state === 'paused', 10_000);
      await waitFor('round 2 started', () => mes.events.some((e) => e.event.type === 'round-started' && e.event.round === 2), 30_000);
      await mesLine.publish('mes/line-a/state', encodeJson({ state: 'Idle' }), { retain: true });
      const result = await run;

      const [r1, r2] = result.rounds;
      assert.deepEqual(r1!.participants, ['site-b'], 'round 1 aggregated without the paused agent');
      assert.ok(r2!.participants.includes('site-a'), 'site-a dropped the stale work and joined round 2');
      const a1 = results.get('site-a')!.find((r) => r.round === 1)!;
      assert.ok(a1.outcome === 'aborted' || a1.outcome === 'skipped', `round 1 work of site-a dropped (${a1.outcome}: ${a1.detail})`);
      assert.equal(results.get('site-a')!.find((r) => r.round === 2)?.outcome, 'accepted');

      // site-c: reported, not waited on for ever.
      const c = results.get('site-c')!;
      assert.deepEqual(
        c.map((r) => r.outcome),
        ['skipped', 'skipped'],
      );
      assert.match(c[0]!.detail!, new RegExp(`the next training window opens at .*, after the round's deadline`));
      const alerts = mes.events.filter((e) => e.event.type === 'alert' && e.event.agent === 'site-c');
      assert.equal(alerts.length, 2);
      assert.equal(alerts[0]!.event.code, ErrorCodes.WINDOW_MISSED);
      assert.equal(alerts[0]!.topic, 'fl/test/events/alert/site-c');
      assert.ok(mes.statuses.some((s) => s.agent === 'site-c' && s.state === 'idle' && /round 1 skipped: the next training window opens/.test(s.detail ?? '')));
      assert.ok(!mes.updates.some((u) => u.agent === 'site-c'), 'site-c never evaluated or trained');
      assert.deepEqual(mes.invalid, []);
    } finally {
      for (const a of agents) await a.close();
      await aggregator.close();
      await mesLine.close();
      await mes.close();
      await broker.close();
      dir.cleanup();
    }
  },
);
