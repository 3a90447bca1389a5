import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { decodeMsgpack } from '../../shared/protocol/wire-codec.js';
import { ErrorCodes } from '../../shared/protocol/errors.js';
import { silentLogger } from '../../shared/util/logger.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema } from '../../shared/protocol/messages.js';
import { MqttTransport } from '../../shared/transport/mqtt-transport.js';
import { createTopics } from '../../shared/protocol/topics.js';
import { startAggregator } from '../../aggregator/main.js';
import { assertFedAvgResult, captureUpdates } from '../federation-checks.js';
import { agentConfig, aggregatorConfig, startAedes, tempDir, tinyDataset, waitFor } from '../helpers.js';
import { ProcessFederation } from '../support/process-federation.js';
import { TcpProxy } from '../support/tcp-proxy.js';

/**
 * Fault 1: an agent loses power in the middle of its upload and comes back. It must resume the
 * same round, and the aggregator must count its update exactly once.
 */
test('an agent killed mid-upload and restarted resumes the round; its update is averaged exactly once', { timeout: 180_000 }, async () => {
  const dir = tempDir('fault-agent-crash');
  const broker = await startAedes();
  // A slow uplink (16 KB/s per connection) so that the upload takes seconds and the kill lands in it.
  const proxy = await TcpProxy.start(broker.port);
  proxy.uploadBytesPerSec = 16_000;
  const procs = new ProcessFederation(dir.path);
  const topics = createTopics('fl/test');
  const observer = await captureUpdates(broker.url);
  const watcher = await MqttTransport.connect({ url: broker.url, clientId: 'watcher', logger: silentLogger() });
  const chunksFromA: number[] = [];
  await watcher.subscribe(topics.updatesAll(), (m) => {
    const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'u' });
    if (msg.type === 'update-chunk' && msg.agent === 'site-a') chunksFromA.push(msg.seq);
  });
  const options = { url: proxy.url, dir: dir.path, agents: ['site-a', 'site-b'], rounds: 1, chunkBytes: 1024 };
  await tinyDataset(join(dir.path, 'data'), options.agents);
  const aggregator = await startAggregator(aggregatorConfig({ ...options, url: broker.url }), silentLogger());
  const agentFile = (a: string) => procs.writeConfig(`agent-${a}`, { ...agentConfig(options, a), maxInflight: 2, ackTimeoutMs: 2000 });
  try {
    await procs.start('site-a', 'agent', agentFile('site-a'));
    await procs.start('site-b', 'agent', agentFile('site-b'));
    const run = aggregator.aggregator.run();

    await waitFor('site-a to be 10 chunks into its upload', () => chunksFromA.length >= 10, 90_000, 10);
    await procs.kill('site-a');
    const seenAtKill = chunksFromA.length;
    await procs.start('site-a', 'agent', agentFile('site-a'));

    const result = await run;
    const round = result.rounds[0]!;
    assert.equal(round.outcome, 'aggregate');
    assert.deepEqual(round.participants, ['site-a', 'site-b']);
    assert.equal(aggregator.aggregator.counters.get('accepted-update'), 2, 'two updates accepted in all: no double weighting');
    const updates = ['site-a', 'site-b'].map((a) => observer.updates.get(`1/${a}`)!);
    await assertFedAvgResult(aggregator.store, 1, updates, [join(dir.path, 'site-a'), join(dir.path, 'site-b')]);
    assert.ok(seenAtKill < Math.ceil(updates[0]!.bytes.byteLength / 1024), 'the kill happened before the upload was complete');
  } finally {
    await procs.stopAll();
    await aggregator.close();
    await watcher.close();
    await observer.close();
    await proxy.close();
    await broker.close();
    dir.cleanup();
  }
});

test('an agent killed right after its update was accepted does not send a second one after restart', { timeout: 180_000 }, async () => {
  const dir = tempDir('fault-agent-acked');
  const broker = await startAedes();
  // site-b uploads slowly, so the round is still open when site-a comes back.
  const proxyA = await TcpProxy.start(broker.port);
  const proxyB = await TcpProxy.start(broker.port);
  proxyB.uploadBytesPerSec = 8_000;
  const procs = new ProcessFederation(dir.path);
  const options = { url: broker.url, dir: dir.path, agents: ['site-a', 'site-b'], rounds: 1, chunkBytes: 1024 };
  await tinyDataset(join(dir.path, 'data'), options.agents);
  const aggregator = await startAggregator(aggregatorConfig(options), silentLogger());
  const agentFile = (a: string, url: string) => procs.writeConfig(`agent-${a}`, { ...agentConfig({ ...options, url }, a), maxInflight: 2, ackTimeoutMs: 2000 });
  const rejected: string[] = [];
  aggregator.aggregator.on('rejected', (r: { code: string; agent: string }) => rejected.push(`${r.agent}:${r.code}`));
  try {
    await procs.start('site-a', 'agent', agentFile('site-a', proxyA.url));
    await procs.start('site-b', 'agent', agentFile('site-b', proxyB.url));
    const run = aggregator.aggregator.run();
    await waitFor("site-a's update to be accepted", () => aggregator.aggregator.counters.get('accepted-update') >= 1, 90_000, 5);
    await procs.kill('site-a');
    await procs.start('site-a', 'agent', agentFile('site-a', proxyA.url));
    const result = await run;
    assert.deepEqual(result.rounds[0]!.participants, ['site-a', 'site-b']);
    assert.equal(aggregator.aggregator.counters.get('accepted-update'), 2);
    // A second, different update would be refused as a duplicate (what happened before agents kept
    // a journal). A late evaluation report for the closed round may be refused, harmlessly.
    assert.deepEqual(
      rejected.filter((r) => r === `site-a:${ErrorCodes.DUPLICATE_UPDATE}`),
      [],
      'site-a sent no second, different update',
    );
  } finally {
    await procs.stopAll();
    await aggregator.close();
    await proxyA.close();
    await proxyB.close();
    await broker.close();
    dir.cleanup();
  }
});
