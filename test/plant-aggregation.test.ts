import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AedesPublishPacket } from 'aedes';
import { startAggregator } from '../aggregator/main.js';
import type { RunningBroker } from '../broker/broker.js';
import { registryPath } from '../aggregator/model-registry.js';
import { startAgent, type RunningAgent } from '../edge-agent/main.js';
import { startPlant, type RunningPlant } from '../plant/main.js';
import { bundleTensors, decodeBundle, type DecodedBundle } from '../shared/bundle/tensor-bundle.js';
import { plantConfigSchema } from '../shared/config/plant-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { SUPPORTED_VERSIONS, updateTopicMessageSchema, type UpdateMeta } from '../shared/protocol/messages.js';
import { decodeMsgpack } from '../shared/protocol/wire-codec.js';
import { silentLogger } from '../shared/util/logger.js';
import { captureUpdates } from './federation-checks.js';
import { agentConfig, aggregatorConfig, startAedes, tempDir, waitFor } from './helpers.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import type { GlobalModel, TrainOptions, TrainResult } from '../training/trainer.js';
import type { TrainTask } from '../shared/protocol/messages.js';
import { FakeTrainer } from './support/fake-trainer.js';

const PLANTS = ['plant-a', 'plant-b', 'plant-c'];
const LINES_PER_PLANT = 3;
const ROUNDS = 2;

/** What arrived at the headquarters broker on its update topics, per headquarters round. */
interface HqInbound {
  /** Payload bytes of every message on `<root>/round/<r>/update/<agent>` (chunks, update-done, eval reports). */
  payloadBytes: number;
  /** Per sender: its upload ids and the weight bytes its chunks carried. */
  senders: Map<string, { uploads: Set<string>; chunkDataBytes: number; bundleBytes: number }>;
}

/** Parsed config of one plant: its lines on `plantUrl`, headquarters at `hqUrl` (federation `test`). */
function plantConfig(plant: string, stateDir: string, hqUrl: string, plantUrl: string, lines: string[], extra: Record<string, unknown> = {}) {
  return parseConfig(
    plantConfigSchema,
    {
      stateDir,
      upstream: { agentId: plant, federation: 'test', mqtt: { url: hqUrl, reconnectPeriodMs: 200 }, ackTimeoutMs: 3000 },
      downstream: {
        federation: plant,
        mqtt: { url: plantUrl, reconnectPeriodMs: 200 },
        agents: lines,
        minClients: lines.length,
        roundDeadlineMs: 120_000,
        waitForAgentsMs: 60_000,
        chunkBytes: 4096,
        ...extra,
      },
    },
    `test plant ${plant}`,
  );
}

function countHqUpdates(hq: RunningBroker, root: string): Map<number, HqInbound> {
  const rounds = new Map<number, HqInbound>();
  const pattern = new RegExp(`^${root}/round/(\\d+)/update/([^/]+)$`);
  hq.aedes.on('publish', (packet: AedesPublishPacket, client) => {
    const m = client ? pattern.exec(packet.topic) : null;
    if (!m) return;
    const round = Number(m[1]);
    let r = rounds.get(round);
    if (!r) rounds.set(round, (r = { payloadBytes: 0, senders: new Map() }));
    const payload = packet.payload as Buffer;
    r.payloadBytes += payload.byteLength;
    const msg = decodeMsgpack(payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: packet.topic, what: 'update' });
    if (msg.type === 'eval' || msg.type === 'bn-stats') return;
    let s = r.senders.get(m[2]!);
    if (!s) r.senders.set(m[2]!, (s = { uploads: new Set(), chunkDataBytes: 0, bundleBytes: 0 }));
    s.uploads.add(msg.upload);
    s.bundleBytes = msg.bundleBytes;
    if (msg.type === 'update-chunk') s.chunkDataBytes += msg.data.byteLength;
  });
  return rounds;
}

/**
 * Float64 FedAvg over the lines' own updates (`mean`), the reference a flat federation of the nine
 * lines computes, and per weight the same average of the absolute values (`scale`): the size of
 * the terms summed, against which a weighted sum's rounding error is measured (where lines pull a
 * weight in opposite directions the mean is near zero, and an error relative to it says nothing).
 */
function flatFedAvg(updates: DecodedBundle<UpdateMeta>[]): Map<string, { mean: Float64Array; scale: Float64Array }> {
  const total = updates.reduce((s, u) => s + u.header.meta.sampleCount, 0);
  const out = new Map<string, { mean: Float64Array; scale: Float64Array }>();
  for (const u of updates) {
    const w = u.header.meta.sampleCount / total;
    for (const t of bundleTensors(u)) {
      let acc = out.get(t.name);
      if (!acc) out.set(t.name, (acc = { mean: new Float64Array(t.data.length), scale: new Float64Array(t.data.length) }));
      for (let i = 0; i < t.data.length; i++) {
        acc.mean[i] += w * t.data[i]!;
        acc.scale[i] += w * Math.abs(t.data[i]!);
      }
    }
  }
  return out;
}

test('three plants of three lines: the headquarters model equals flat FedAvg over the nine lines, one update per plant into headquarters', async (t) => {
  const dir = tempDir('plants');
  const logger = silentLogger();
  const hqBroker = await startAedes();
  const plantBrokers: RunningBroker[] = [];
  const observers: Awaited<ReturnType<typeof captureUpdates>>[] = [];
  const lines: RunningAgent[] = [];
  const plants: RunningPlant[] = [];
  let hq: Awaited<ReturnType<typeof startAggregator>> | null = null;
  t.after(async () => {
    for (const p of plants) await p.close().catch(() => undefined);
    for (const l of lines) await l.close().catch(() => undefined);
    await hq?.close().catch(() => undefined);
    for (const o of observers) await o.close().catch(() => undefined);
    for (const b of [...plantBrokers, hqBroker]) await b.close().catch(() => undefined);
    dir.cleanup();
  });

  const inbound = countHqUpdates(hqBroker, 'fl/test');
  const hqOptions = { url: hqBroker.url, dir: dir.path, agents: PLANTS, rounds: ROUNDS, aggregator: { evaluateFinalModel: false } };
  const headquarters = await startAggregator(aggregatorConfig(hqOptions), logger);
  hq = headquarters;

  for (const [p, plant] of PLANTS.entries()) {
    const broker = await startAedes();
    plantBrokers.push(broker);
    observers.push(await captureUpdates(broker.url, `fl/${plant}`));
    const lineIds = Array.from({ length: LINES_PER_PLANT }, (_, l) => `${plant}-line-${l + 1}`);
    const config = plantConfig(plant, join(dir.path, plant), hqBroker.url, broker.url, lineIds);
    for (const [l, line] of lineIds.entries()) {
      const seed = p * LINES_PER_PLANT + l;
      const cfg = agentConfig({ url: broker.url, dir: join(dir.path, plant), agents: lineIds, agent: { federation: plant, ackTimeoutMs: 3000 } }, line);
      lines.push(await startAgent(cfg, logger, { trainerFor: async () => new FakeTrainer(seed) }));
    }
    plants.push(await startPlant(config, logger));
  }

  const result = await headquarters.aggregator.run();
  assert.equal(result.finalVersion, ROUNDS, `headquarters made ${ROUNDS} versions`);

  // The plants' release gates decided on the headquarters models their lines evaluated.
  for (const [p, plant] of PLANTS.entries()) {
    const registry = JSON.parse(readFileSync(registryPath(join(dir.path, plant, 'downstream')), 'utf8')) as {
      released: number | null;
      versions: Record<string, unknown>;
    };
    assert.deepEqual(
      Object.keys(registry.versions).sort(),
      Array.from({ length: ROUNDS }, (_, v) => String(v)),
      `${plant}: the plant's registry holds the headquarters versions it federated`,
    );
    assert.ok(registry.released !== null && registry.released < ROUNDS, `${plant}: a headquarters version its lines evaluated is released at the plant`);
    assert.ok(plants[p]!.downstream.store.dir(registry.released).startsWith(join(dir.path, plant)));
  }

  const lineUpdates = observers.flatMap((o) => [...o.updates.values()]);
  for (let version = 1; version <= ROUNDS; version++) {
    const record = headquarters.aggregator.history().find((r) => r.newVersion === version)!;
    assert.deepEqual(record.participants, PLANTS, `round ${record.round}: every plant took part as one agent`);
    // The flat reference: the nine lines' updates from the base of this round, in float64.
    const fromBase = lineUpdates.filter((u) => u.header.meta.baseVersion === version - 1);
    assert.equal(fromBase.length, PLANTS.length * LINES_PER_PLANT, `nine line updates made from version ${version - 1}`);
    for (const plant of PLANTS) {
      const claimed = fromBase.filter((u) => u.header.meta.agent.startsWith(`${plant}-`)).reduce((s, u) => s + u.header.meta.sampleCount, 0);
      assert.equal(record.sampleCounts[plant], claimed, `${plant} weighs upstream as the sum of its lines' samples`);
    }
    const reference = flatFedAvg(fromBase);
    const global = new Map(bundleTensors(decodeBundle(await headquarters.store.readBundle(version))).map((x) => [x.name, x.data]));
    // Relative error three ways: per tensor (max |diff| / max |flat|), per weight against the size
    // of the terms summed (both asserted), and per weight against the weight itself (printed).
    let worstNormwise = 0;
    let worstScaled = 0;
    let worstElement = 0;
    let compared = 0;
    for (const [name, { mean, scale }] of reference) {
      const got = global.get(name)!;
      let maxDiff = 0;
      let maxRef = 0;
      for (let i = 0; i < mean.length; i++) {
        const d = Math.abs(got[i]! - mean[i]!);
        maxDiff = Math.max(maxDiff, d);
        maxRef = Math.max(maxRef, Math.abs(mean[i]!));
        worstScaled = Math.max(worstScaled, d / scale[i]!);
        if (mean[i] !== 0) worstElement = Math.max(worstElement, d / Math.abs(mean[i]!));
        compared++;
      }
      worstNormwise = Math.max(worstNormwise, maxDiff / maxRef);
    }
    assert.ok(compared > 1000, `compared ${compared} weights`);
    console.log(
      `version ${version}: ${compared} weights against float64 flat FedAvg over ${fromBase.length} lines: relative error per tensor ${worstNormwise.toExponential(2)}, ` +
        `per weight against the terms' size ${worstScaled.toExponential(2)}, per weight against itself ${worstElement.toExponential(2)}`,
    );
    assert.ok(worstNormwise <= 1e-6, `version ${version}: relative error ${worstNormwise} per tensor against flat FedAvg over the nine lines`);
    assert.ok(worstScaled <= 1e-6, `version ${version}: relative error ${worstScaled} per weight (against the terms' size) against flat FedAvg`);

    // Bytes into headquarters in this round: one update per plant, nothing resent.
    const bytes = inbound.get(record.round)!;
    assert.deepEqual([...bytes.senders.keys()].sort(), PLANTS, `round ${record.round}: updates came from the plants only`);
    const lineBundleBytes = fromBase[0]!.bytes.byteLength;
    for (const [plant, s] of bytes.senders) {
      assert.equal(s.uploads.size, 1, `${plant} sent one update in round ${record.round}`);
      assert.equal(s.chunkDataBytes, s.bundleBytes, `${plant}: its update's bytes once, none resent`);
      assert.ok(Math.abs(s.bundleBytes - lineBundleBytes) < 0.01 * lineBundleBytes, `${plant}'s update is the size of one line's update`);
    }
    const updateBytes = [...bytes.senders.values()].reduce((s, x) => s + x.bundleBytes, 0);
    assert.ok(bytes.payloadBytes < 1.1 * updateBytes, `payload ${bytes.payloadBytes} B for ${updateBytes} B of updates`);
    console.log(
      `round ${record.round}: ${bytes.payloadBytes} B into headquarters on update topics (${PLANTS.length} updates of ${bytes.senders.get(PLANTS[0]!)!.bundleBytes} B + chunk headers and eval reports); ` +
        `flat over ${fromBase.length} lines: ${fromBase.length} updates of ${lineBundleBytes} B`,
    );
  }
});

/** A line that never finishes training (its line never idles): it stops only when its round's work is aborted. */
class NeverDoneTrainer extends FakeTrainer {
  override train(_model: GlobalModel, _task: TrainTask, _names: readonly string[], options: TrainOptions): Promise<TrainResult> {
    return new Promise((_resolve, reject) => options.signal?.addEventListener('abort', () => reject(options.signal!.reason), { once: true }));
  }
}

test('a plant round without an aggregate: the plant sends headquarters nothing and raises FL_PLANT_ROUND_EMPTY', async (t) => {
  const dir = tempDir('plant-empty');
  const logger = silentLogger();
  const hqBroker = await startAedes();
  const plantBroker = await startAedes();
  const lines: RunningAgent[] = [];
  let plant: RunningPlant | null = null;
  let mes: MqttTransport | null = null;
  const headquarters = await startAggregator(
    aggregatorConfig({ url: hqBroker.url, dir: dir.path, agents: ['plant-a'], rounds: 1, roundDeadlineMs: 120_000, aggregator: { evaluateFinalModel: false } }),
    logger,
  );
  t.after(async () => {
    await plant?.close().catch(() => undefined);
    for (const l of lines) await l.close().catch(() => undefined);
    await headquarters.close().catch(() => undefined);
    await mes?.close().catch(() => undefined);
    for (const b of [plantBroker, hqBroker]) await b.close().catch(() => undefined);
    dir.cleanup();
  });
  const inbound = countHqUpdates(hqBroker, 'fl/test');
  const alerts: { code: string; agent?: string; message: string }[] = [];
  mes = await MqttTransport.connect({ url: hqBroker.url, clientId: 'test-mes', logger });
  await mes.subscribe('fl/test/events/alert/#', (m) => alerts.push(JSON.parse(Buffer.from(m.payload).toString('utf8'))));

  const lineIds = ['plant-a-line-1', 'plant-a-line-2'];
  for (const [i, line] of lineIds.entries()) {
    const cfg = agentConfig(
      { url: plantBroker.url, dir: join(dir.path, 'plant-a'), agents: lineIds, agent: { federation: 'plant-a', ackTimeoutMs: 3000 } },
      line,
    );
    lines.push(await startAgent(cfg, logger, { trainerFor: async () => (i === 0 ? new FakeTrainer(i) : new NeverDoneTrainer(i)) }));
  }
  // Both lines must deliver; one never does, so the plant round closes at its deadline without an aggregate.
  plant = await startPlant(plantConfig('plant-a', join(dir.path, 'plant-a'), hqBroker.url, plantBroker.url, lineIds, { roundDeadlineMs: 3000 }), logger);
  const run = headquarters.aggregator.run();

  await waitFor("the plant's FL_PLANT_ROUND_EMPTY alert at headquarters", () => alerts.some((a) => a.code === 'FL_PLANT_ROUND_EMPTY'), 90_000);
  const alert = alerts.find((a) => a.code === 'FL_PLANT_ROUND_EMPTY')!;
  assert.equal(alert.agent, 'plant-a');
  assert.match(alert.message, /without an aggregate/);
  await waitFor("the plant's status at headquarters says why", () => plant!.upstream.agent.state === 'error');
  assert.match(plant.upstream.agent.status.detail ?? '', /without an aggregate/);
  await headquarters.aggregator.stop();
  const result = await run;
  assert.equal(result.finalVersion, 0, 'headquarters kept its model');
  assert.deepEqual(result.rounds[0]!.participants, []);
  assert.equal(inbound.get(1)?.senders.size ?? 0, 0, 'no update chunk reached headquarters');
});
