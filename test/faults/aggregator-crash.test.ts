import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FsModelStore } from '../../aggregator/model-store.js';
import { startAgent, type RunningAgent } from '../../edge-agent/main.js';
import { decodeMsgpack } from '../../shared/protocol/wire-codec.js';
import { silentLogger } from '../../shared/util/logger.js';
import { ackSchema, SUPPORTED_VERSIONS, updateTopicMessageSchema } from '../../shared/protocol/messages.js';
import { MqttTransport } from '../../shared/transport/mqtt-transport.js';
import { createTopics } from '../../shared/protocol/topics.js';
import { agentConfig, aggregatorConfig, startAedes, tempDir, tinyDataset, waitFor } from '../helpers.js';
import { ProcessFederation } from '../support/process-federation.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const AGENTS = ['site-a', 'site-b', 'site-c'];

/**
 * One federation round with the aggregator as its own process; site-c uploads through a slow link.
 * With `crash`, the aggregator is killed (SIGKILL) once it has accepted two updates and started
 * again. Returns the final model's weights and what the agents sent after the restart.
 */
async function runFederation(crash: boolean) {
  const dir = tempDir(crash ? 'fault-agg-crash' : 'fault-agg-ref');
  const broker = await startAedes();
  const slow = await TcpProxy.start(broker.port);
  slow.uploadBytesPerSec = 6_000;
  const procs = new ProcessFederation(dir.path);
  const topics = createTopics('fl/test');
  const options = { url: broker.url, dir: dir.path, agents: AGENTS, rounds: 1, chunkBytes: 1024 };
  await tinyDataset(join(dir.path, 'data'), AGENTS);
  const aggFile = procs.writeConfig('aggregator', { ...aggregatorConfig(options), exitWhenComplete: true });
  const watcher = await MqttTransport.connect({ url: broker.url, clientId: 'watcher', logger: silentLogger() });
  const accepted = new Set<string>();
  let restarted = false;
  const chunksAfterRestart = new Map<string, number>();
  await watcher.subscribe(topics.updatesAll(), (m) => {
    const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'u' });
    if (restarted && msg.type === 'update-chunk') chunksAfterRestart.set(msg.agent, (chunksAfterRestart.get(msg.agent) ?? 0) + 1);
  });
  await watcher.subscribe(`${topics.root}/round/+/ack/+`, (m) => {
    const ack = decodeMsgpack(m.payload, ackSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'ack' });
    if (ack.status === 'accepted') accepted.add(ack.agent);
  });
  const agents: RunningAgent[] = [];
  try {
    let aggregator = await procs.start('aggregator', 'aggregator', aggFile);
    for (const a of AGENTS)
      agents.push(await startAgent({ ...agentConfig({ ...options, url: a === 'site-c' ? slow.url : broker.url }, a), ackTimeoutMs: 1500 }, silentLogger()));
    if (crash) {
      await waitFor('two updates accepted', () => accepted.size >= 2, 90_000, 5);
      assert.ok(!accepted.has('site-c'), 'site-c is still uploading when the aggregator dies');
      await procs.kill('aggregator');
      restarted = true;
      aggregator = await procs.start('aggregator', 'aggregator', aggFile);
    }
    assert.equal(await aggregator.exited, 0, 'the aggregator finished the federation');
    const store = new FsModelStore(join(dir.path, 'aggregator', 'models'));
    const journal = JSON.parse(readFileSync(join(dir.path, 'aggregator', 'journal.json'), 'utf8')) as {
      rounds: { round: number; participants: string[]; outcome: string }[];
    };
    return { weights: readFileSync(join(store.dir(1), 'weights.bin')), journal, chunksAfterRestart, acceptedBeforeCrash: [...accepted] };
  } finally {
    for (const a of agents) await a.close();
    await procs.stopAll();
    await watcher.close();
    await slow.close();
    await broker.close();
    dir.cleanup();
  }
}

test(
  'an aggregator killed mid-round continues the round from its journal, asks no agent to resend what it verified, and produces a bit-identical model',
  { timeout: 240_000 },
  async () => {
    const reference = await runFederation(false);
    const crashed = await runFederation(true);
    assert.equal(crashed.journal.rounds[0]!.outcome, 'aggregate');
    assert.deepEqual(crashed.journal.rounds[0]!.participants, AGENTS);
    const verifiedBefore = crashed.acceptedBeforeCrash.filter((a) => a !== 'site-c');
    assert.equal(verifiedBefore.length, 2);
    for (const a of verifiedBefore) assert.equal(crashed.chunksAfterRestart.get(a) ?? 0, 0, `${a} sent no chunk after the restart`);
    assert.ok(reference.weights.equals(crashed.weights), 'the global model is bit-identical to the uninterrupted run');
  },
);
