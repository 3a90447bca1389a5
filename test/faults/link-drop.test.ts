import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { decodeMsgpack } from '../../shared/protocol/wire-codec.js';
import { silentLogger } from '../../shared/util/logger.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema } from '../../shared/protocol/messages.js';
import { MqttTransport } from '../../shared/transport/mqtt-transport.js';
import { createTopics } from '../../shared/protocol/topics.js';
import { assertFedAvgResult, captureUpdates } from '../federation-checks.js';
import { captureLogger, startAedes, startFederation, tempDir } from '../helpers.js';
import { TcpProxy } from '../support/tcp-proxy.js';

/**
 * Fault 2: the link drops during a model download and during an update upload. Agents reach the
 * broker through a TCP proxy that cuts every connection mid-transfer; the transfers must complete
 * after the reconnect, resending only what is missing.
 */
test('links cut mid-download and mid-upload: the round completes and only missing chunks are resent', { timeout: 120_000 }, async () => {
  const dir = tempDir('fault-link');
  const broker = await startAedes();
  const proxy = await TcpProxy.start(broker.port);
  const topics = createTopics('fl/test');
  const observer = await captureUpdates(broker.url);
  const { logger, lines } = captureLogger();
  // Count update chunks per agent as the broker sees them.
  const chunkMsgs = new Map<string, number>();
  let uploadCut = false;
  const watcher = await MqttTransport.connect({ url: broker.url, clientId: 'watcher', logger: silentLogger() });
  await watcher.subscribe(topics.updatesAll(), (m) => {
    const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'u' });
    if (msg.type !== 'update-chunk') return;
    chunkMsgs.set(msg.agent, (chunkMsgs.get(msg.agent) ?? 0) + 1);
    // Cut the links once the first agent is a few chunks into its upload.
    if (!uploadCut && chunkMsgs.get(msg.agent) === 5) {
      uploadCut = true;
      proxy.dropAll();
    }
  });
  // Agents go through the proxy; the aggregator talks to the broker directly.
  const fed = await startFederation({
    url: proxy.url,
    dir: dir.path,
    agents: ['site-a', 'site-b'],
    rounds: 1,
    chunkBytes: 1024,
    logger,
    aggregator: { mqtt: { url: broker.url, reconnectPeriodMs: 200, connectTimeoutMs: 10_000, keepaliveSec: 30 } } as never,
    agent: { maxInflight: 2, ackTimeoutMs: 2000 } as never,
  });
  try {
    // The first model download: cut after 10 KB of it have reached the agents.
    proxy.dropAfterDownload(10_000);
    const result = await fed.aggregator.aggregator.run();

    assert.ok(proxy.drops >= 2, `links were cut ${proxy.drops} times`);
    assert.ok(uploadCut, 'an upload was cut');
    assert.equal(result.rounds[0]!.outcome, 'aggregate');
    assert.deepEqual(result.rounds[0]!.participants, ['site-a', 'site-b']);
    const updates = ['site-a', 'site-b'].map((a) => observer.updates.get(`1/${a}`)!);
    await assertFedAvgResult(fed.aggregator.store, 1, updates, [join(dir.path, 'site-a'), join(dir.path, 'site-b')]);
    // Only missing chunks went again: far fewer chunk messages than two full uploads.
    const total = Math.ceil(updates[0]!.bytes.byteLength / 1024);
    for (const [agent, n] of chunkMsgs) assert.ok(n < total * 1.5, `${agent}: ${n} chunk messages for a ${total}-chunk update`);
    assert.ok(
      lines.some((l) => /reconnect|connection lost/i.test(String(l.msg))),
      'the disconnect was logged',
    );
  } finally {
    await fed.stop();
    await watcher.close();
    await observer.close();
    await proxy.close();
    await broker.close();
    dir.cleanup();
  }
});
