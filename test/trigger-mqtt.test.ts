import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SourceUpdate } from '../edge-agent/triggers/source.js';
import { ManualTriggerSource } from '../edge-agent/triggers/sources/manual-source.js';
import { MqttTriggerSource } from '../edge-agent/triggers/sources/mqtt-source.js';
import { buildGate } from '../edge-agent/triggers/build-gate.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import { silentLogger } from '../shared/util/logger.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { createTopics } from '../shared/protocol/topics.js';
import { startAedes, tempDir, waitFor } from './helpers.js';

const topics = createTopics('fl/test');

async function connect(url: string, id: string) {
  return MqttTransport.connect({ url, clientId: id, logger: silentLogger() });
}

test('MQTT trigger source: follows the MES line state (retained, JSON path), unknown on bad payloads and when stale', { timeout: 30_000 }, async () => {
  const broker = await startAedes();
  const mes = await connect(broker.url, 'mes');
  const agent = await connect(broker.url, 'agent');
  try {
    // The MES published the line state before the agent started: retained, so it is known at once.
    await mes.publish('mes/line1/state', encodeJson({ line: { state: 'Running', speed: 12 } }), { retain: true });
    const updates: SourceUpdate[] = [];
    const source = new MqttTriggerSource(
      { type: 'mqtt', topic: 'mes/line1/state', path: '$.line.state', when: { equals: 'Idle' }, staleAfterMs: 800 },
      agent,
      silentLogger(),
    );
    await source.start({ update: (u) => updates.push(u), problem: () => undefined });
    const last = () => updates.at(-1)!;
    await waitFor('the retained state', () => last().state === 'closed');
    assert.match(last().detail, /"Running" \(needs == "Idle"\)/);
    await mes.publish('mes/line1/state', encodeJson({ line: { state: 'Idle' } }), { retain: true });
    await waitFor('idle', () => last().state === 'open');
    await mes.publish('mes/line1/state', encodeJson({ line: { mode: 'Idle' } }), { retain: true });
    await waitFor('unknown on a payload without the value', () => last().state === 'unknown');
    assert.match(last().detail, /does not exist/);
    await mes.publish('mes/line1/state', Buffer.from([0xff, 0x00]), { retain: true });
    await waitFor('unknown on garbage', () => last().state === 'unknown' && /not JSON/.test(last().detail));
    await mes.publish('mes/line1/state', encodeJson({ line: { state: 'Idle' } }), { retain: true });
    await waitFor('idle again', () => last().state === 'open');
    // The MES goes quiet: after staleAfterMs the state is unknown, no training on old news.
    await waitFor('stale', () => last().state === 'unknown', 5000);
    assert.match(last().detail, /nothing on mes\/line1\/state for 800 ms/);
    await source.stop();
  } finally {
    await mes.close();
    await agent.close();
    await broker.close();
  }
});

test('manual source: pause/resume commands (targeted or for all), bad commands refused, state kept across restarts', { timeout: 30_000 }, async () => {
  const broker = await startAedes();
  const dir = tempDir('manual');
  const mes = await connect(broker.url, 'mes');
  const agentConn = await connect(broker.url, 'agent');
  const stateFile = join(dir.path, 'manual-window.json');
  try {
    const updates: SourceUpdate[] = [];
    const applied: string[] = [];
    const rejected: string[] = [];
    const make = () =>
      new ManualTriggerSource({
        transport: agentConn,
        topics,
        agentId: 'site-a',
        initially: 'open',
        stateFile,
        log: silentLogger(),
        onCommand: (verb, c) => applied.push(`${verb}:${c.requestId ?? ''}`),
        onReject: (err) => rejected.push((err as Error).message),
      });
    let source = make();
    await source.start({ update: (u) => updates.push(u), problem: () => undefined });
    const last = () => updates.at(-1)!;
    assert.equal(last().state, 'open');
    await mes.publish(topics.command('pause'), encodeJson({ v: 1, requestId: 'r1', by: 'shift-lead', reason: 'tool change', agents: ['site-b'] }));
    await mes.publish(topics.command('pause'), encodeJson({ v: 1, requestId: 'r2', by: 'shift-lead', reason: 'tool change' }));
    await waitFor('paused', () => last().state === 'closed');
    assert.deepEqual(applied, ['pause:r2'], 'a command for other agents is ignored');
    assert.match(last().detail, /paused by command by shift-lead \(tool change\)/);
    await mes.publish(topics.command('resume'), Buffer.from('{"v":1,"agents":"all"}'));
    await mes.publish(topics.command('resume'), Buffer.from('{"v":9}'));
    await waitFor('two rejections', () => rejected.length === 2);
    assert.match(rejected[0]!, /resume command on fl\/test\/cmd\/resume is malformed: agents/);
    assert.match(rejected[1]!, /protocol version 9/);
    assert.equal(last().state, 'closed', 'bad commands change nothing');
    await waitFor('the state saved', () => existsSync(stateFile) && JSON.parse(readFileSync(stateFile, 'utf8')).open === false);
    await source.stop();
    // A restart keeps the agent paused until someone resumes it.
    source = make();
    await source.start({ update: (u) => updates.push(u), problem: () => undefined });
    assert.equal(last().state, 'closed');
    await mes.publish(topics.command('resume'), encodeJson({ v: 1, requestId: 'r3' }));
    await waitFor('resumed', () => last().state === 'open');
    await source.stop();
  } finally {
    await mes.close();
    await agentConn.close();
    await broker.close();
    dir.cleanup();
  }
});

test('buildGate: operator commands always count (an implicit manual source, all-ed with the configured trigger)', { timeout: 30_000 }, async () => {
  const broker = await startAedes();
  const dir = tempDir('gate');
  const mes = await connect(broker.url, 'mes');
  const agentConn = await connect(broker.url, 'agent');
  try {
    const gate = buildGate(
      { type: 'mqtt', topic: 'mes/line2/state', when: { equals: 'Idle' } },
      { transport: agentConn, topics, agentId: 'site-a', stateDir: dir.path, log: silentLogger() },
    );
    await gate.start();
    assert.equal(gate.snapshot().state, 'unknown', 'no MES message yet: unknown, no training');
    await mes.publish('mes/line2/state', Buffer.from('Idle'));
    await waitFor('open', () => gate.open);
    await mes.publish(topics.command('pause'), encodeJson({ v: 1 }));
    await waitFor('closed by the operator', () => gate.snapshot().state === 'closed');
    assert.match(gate.snapshot().detail, /^manual: paused by command/);
    await mes.publish(topics.command('resume'), encodeJson({ v: 1 }));
    await waitFor('open again', () => gate.open);
    await gate.stop();
    assert.throws(
      () =>
        buildGate(
          {
            type: 'any',
            sources: [
              { type: 'manual', initially: 'open' },
              { type: 'manual', initially: 'closed' },
            ],
          },
          { transport: agentConn, topics, agentId: 'a', stateDir: dir.path, log: silentLogger() },
        ),
      /at most one "manual" source/,
    );
  } finally {
    await mes.close();
    await agentConn.close();
    await broker.close();
    dir.cleanup();
  }
});
