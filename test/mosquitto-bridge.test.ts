import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AccessPolicy, renderMosquittoAcl } from '../broker/access.js';
import { mosquittoAvailable, REPO_ROOT, tempDir, waitFor } from './helpers.js';
import {
  EXAMPLE_DIR,
  HQ_ROOT,
  loadAccess,
  PLANT_AGENT,
  PLANT_ROOT,
  startBridgedBrokers,
  subscribeAll,
  type BridgedBrokers,
  type HqKind,
  type Received,
} from './support/bridged-brokers.js';

/**
 * The plant/headquarters bridge as shipped in examples/mosquitto-bridge/ (docs/bridge.md): two
 * real Mosquitto processes, the plant's bridging the federation's topics to HQ's, and what
 * crosses the link between them, byte for byte.
 */

const bin = mosquittoAvailable();
const skip = bin ? false : 'mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)';
const example = (f: string) => readFileSync(join(EXAMPLE_DIR, f), 'utf8');
const CHUNK_BYTES = 256 * 1024;

/** The bridge's `topic` lines of plant.conf: pattern, direction, QoS. */
function bridgeTopics(): { pattern: string; direction: string; qos: string }[] {
  return [...example('plant.conf').matchAll(/^topic\s+(\S+)\s+(\S+)\s+(\S+)\s*$/gm)].map((m) => ({ pattern: m[1]!, direction: m[2]!, qos: m[3]! }));
}

test('examples/mosquitto-bridge: the ACLs are `fedline acl` of the access files', () => {
  const render = (f: string) => renderMosquittoAcl(new AccessPolicy(loadAccess(f)), `examples/mosquitto-bridge/${f}`);
  assert.equal(example('hq.acl'), render('hq-access.json'));
  assert.equal(example('plant.acl'), `${render('plant-access.json')}\n${render('plant-upstream-access.json')}`);
});

test('examples/mosquitto-bridge: the bridge carries exactly the rights HQ gives the plant agent, QoS 1, and nothing of the plant root', () => {
  const atHq = new AccessPolicy(loadAccess('hq-access.json')).rights(PLANT_AGENT)!;
  const atPlant = new AccessPolicy(loadAccess('plant-upstream-access.json')).rights(PLANT_AGENT)!;
  assert.deepEqual(atPlant, atHq, 'the plant service may do at the plant what HQ lets its bridge do');
  const topics = bridgeTopics();
  assert.deepEqual(
    topics.filter((t) => t.direction === 'in').map((t) => t.pattern),
    atHq.read,
    'down: what the plant agent reads at HQ',
  );
  assert.deepEqual(
    topics.filter((t) => t.direction === 'out').map((t) => t.pattern),
    atHq.write,
    'up: what the plant agent writes at HQ',
  );
  assert.ok(
    topics.every((t) => t.qos === '1' && t.pattern.startsWith(`${HQ_ROOT}/`)),
    'QoS 1, only under the HQ root',
  );
  assert.equal(loadAccess('plant-access.json').topicRoot, PLANT_ROOT);
  assert.equal(loadAccess('hq-access.json').topicRoot, HQ_ROOT);
});

test("examples/mosquitto-bridge: hq.conf and plant.conf keep every setting of the repository's mosquitto.conf", () => {
  const settings = readFileSync(join(REPO_ROOT, 'mosquitto.conf'), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'));
  assert.ok(settings.length >= 15);
  for (const f of ['hq.conf', 'plant.conf']) {
    const lines = new Set(example(f).split('\n'));
    for (const s of settings) assert.ok(lines.has(s), `${f} has "${s}"`);
  }
});

/** Start the pair, run `body`, stop everything whatever happens. */
async function withBrokers(name: string, hqKind: HqKind, body: (b: BridgedBrokers) => Promise<void>): Promise<void> {
  const dir = tempDir(name);
  try {
    const brokers = await startBridgedBrokers(bin!, dir.path, hqKind);
    try {
      await body(brokers);
    } finally {
      await brokers.stop();
    }
  } finally {
    dir.cleanup();
  }
}

const payloadOf = (got: Received[], topic: string) => got.filter((m) => m.topic === topic).at(-1)?.payload;
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(2);

// Headquarters on Mosquitto (hq.conf), as shipped, and on the embedded broker: the plant's Mosquitto bridge works with both.
for (const hqKind of ['mosquitto', 'embedded'] as const) {
  test(
    `bridge to ${hqKind} HQ: retained round announcement, manifest and model chunk published at HQ reach the plant, also a late subscriber; cleared chunks are cleared there too`,
    { skip, timeout: 120_000 },
    async () => {
      await withBrokers(`bridge-down-${hqKind}`, hqKind, async (b) => {
        const live = await b.connect('plant', PLANT_AGENT);
        const liveGot = await subscribeAll(live, [`${HQ_ROOT}/round`, `${HQ_ROOT}/model/#`]);
        const hq = await b.connect('hq', 'aggregator');
        const round = randomBytes(300);
        const chunk = randomBytes(CHUNK_BYTES);
        const manifest = Buffer.from(JSON.stringify({ v: 1, version: 1, chunks: 1 }));
        // Published while the bridge is up: the plant keeps them retained only if HQ forwards the retain flag (try_private).
        await hq.publishAsync(`${HQ_ROOT}/round`, round, { qos: 1, retain: true });
        await hq.publishAsync(`${HQ_ROOT}/model/1/0`, chunk, { qos: 1, retain: true });
        await hq.publishAsync(`${HQ_ROOT}/model/latest`, manifest, { qos: 1, retain: true });
        await waitFor('the HQ state at the plant', () => liveGot.length >= 3, 30_000);
        assert.deepEqual(payloadOf(liveGot, `${HQ_ROOT}/round`), round);
        assert.deepEqual(payloadOf(liveGot, `${HQ_ROOT}/model/1/0`), chunk);
        assert.deepEqual(payloadOf(liveGot, `${HQ_ROOT}/model/latest`), manifest);
        await live.endAsync();

        // A plant service that connects later finds them at the plant broker, retained, byte for byte.
        const late = await b.connect('plant', PLANT_AGENT);
        const lateGot = await subscribeAll(late, [`${HQ_ROOT}/round`, `${HQ_ROOT}/model/#`]);
        await waitFor('the retained HQ state for a late subscriber', () => lateGot.length >= 3, 30_000);
        assert.ok(
          lateGot.every((m) => m.retain),
          'delivered as retained messages',
        );
        assert.deepEqual(payloadOf(lateGot, `${HQ_ROOT}/round`), round);
        assert.deepEqual(payloadOf(lateGot, `${HQ_ROOT}/model/1/0`), chunk);
        assert.deepEqual(payloadOf(lateGot, `${HQ_ROOT}/model/latest`), manifest);

        // HQ clears the old chunk (empty retained publish) and announces version 2: the plant follows.
        // `late` sees both arrive at the plant, in order; only then does a new subscriber look.
        const manifest2 = Buffer.from(JSON.stringify({ v: 1, version: 2, chunks: 1 }));
        await hq.publishAsync(`${HQ_ROOT}/model/1/0`, Buffer.alloc(0), { qos: 1, retain: true });
        await hq.publishAsync(`${HQ_ROOT}/model/latest`, manifest2, { qos: 1, retain: true });
        await waitFor('the new manifest at the plant', () => payloadOf(lateGot, `${HQ_ROOT}/model/latest`)?.equals(manifest2) === true, 30_000);
        await late.endAsync();
        const third = await b.connect('plant', PLANT_AGENT);
        const thirdGot = await subscribeAll(third, [`${HQ_ROOT}/model/#`]);
        await waitFor('the retained manifest for a new subscriber', () => thirdGot.length >= 1, 30_000);
        // A round trip after the SUBACK (a publish the plant's ACL drops, acknowledged all the same):
        // every retained message the broker had for the subscription is delivered by then.
        await third.publishAsync(`${PLANT_ROOT}/probe`, Buffer.from('probe'), { qos: 1 });
        assert.deepEqual(
          thirdGot.map((m) => [m.topic, m.payload.toString()]),
          [[`${HQ_ROOT}/model/latest`, manifest2.toString()]],
          'the cleared chunk is gone at the plant too',
        );
      });
    },
  );

  test(
    `bridge to ${hqKind} HQ: a 3 MiB update in 256 KiB QoS 1 chunks goes up exactly once with identical bytes; only this plant's ack comes down`,
    { skip, timeout: 120_000 },
    async () => {
      await withBrokers(`bridge-up-${hqKind}`, hqKind, async (b) => {
        const agg = await b.connect('hq', 'aggregator');
        const atHq = await subscribeAll(agg, [`${HQ_ROOT}/round/+/update/+`]);
        const service = await b.connect('plant', PLANT_AGENT);
        const acks = await subscribeAll(service, [`${HQ_ROOT}/round/+/ack/${PLANT_AGENT}`]);
        const chunks = Array.from({ length: 12 }, (_, seq) => Buffer.concat([Buffer.from([seq]), randomBytes(CHUNK_BYTES)]));
        const topic = `${HQ_ROOT}/round/7/update/${PLANT_AGENT}`;
        const upBefore = b.link.bytesFromClients;
        for (const c of chunks) await service.publishAsync(topic, c, { qos: 1 });
        // A last message on the same topic: QoS 1 keeps the order, so once it is at HQ, any duplicate of a chunk would be too.
        await service.publishAsync(topic, Buffer.from('end'), { qos: 1 });
        await waitFor('the update at HQ', () => atHq.at(-1)?.payload.toString() === 'end', 60_000);
        const upBytes = b.link.bytesFromClients - upBefore;
        const received = atHq.slice(0, -1);
        assert.equal(received.length, chunks.length, 'every chunk once, no duplicates');
        assert.deepEqual(
          received.map((m) => m.payload[0]),
          chunks.map((_, i) => i),
        );
        const sha = (bufs: Buffer[]) => createHash('sha256').update(Buffer.concat(bufs)).digest('hex');
        assert.equal(sha(received.map((m) => m.payload)), sha(chunks));
        const payloadBytes = chunks.reduce((s, c) => s + c.length, 0) + 3;
        assert.ok(upBytes >= payloadBytes && upBytes < payloadBytes * 1.01, `${upBytes} bytes crossed for ${payloadBytes} bytes of payload`);
        console.log(
          `bridge (${hqKind} HQ): update of ${mib(payloadBytes)} MiB (${chunks.length} chunks + end) -> ${upBytes} bytes into HQ (${((upBytes / payloadBytes - 1) * 100).toFixed(3)} % MQTT overhead)`,
        );

        // HQ acks this plant and another: only this plant's ack crosses down.
        const downBefore = b.link.bytesToClients;
        await agg.publishAsync(`${HQ_ROOT}/round/7/ack/plant-b`, randomBytes(64 * 1024), { qos: 1 });
        await agg.publishAsync(`${HQ_ROOT}/round/7/ack/${PLANT_AGENT}`, Buffer.from('accepted'), { qos: 1 });
        await waitFor("this plant's ack", () => acks.length === 1, 30_000);
        assert.equal(acks[0]!.payload.toString(), 'accepted');
        const downBytes = b.link.bytesToClients - downBefore;
        assert.ok(downBytes < 1024, `${downBytes} bytes came down for one small ack (another plant's 64 KiB ack stayed at HQ)`);
        console.log(`bridge (${hqKind} HQ): another plant's 64 KiB ack and this plant's 8-byte ack at HQ -> ${downBytes} bytes down to the plant`);
      });
    },
  );

  test(`bridge to ${hqKind} HQ: the plant's own traffic (the lines under the plant root) never crosses to HQ`, { skip, timeout: 120_000 }, async () => {
    await withBrokers(`bridge-local-${hqKind}`, hqKind, async (b) => {
      const plantAggregator = await b.connect('plant', 'aggregator');
      const updates = await subscribeAll(plantAggregator, [`${PLANT_ROOT}/round/+/update/+`, `${PLANT_ROOT}/agent/+/status`]);
      const hqAgg = await b.connect('hq', 'aggregator');
      const statusAtHq = await subscribeAll(hqAgg, [`${HQ_ROOT}/agent/+/status`]);
      const line = await b.connect('plant', 'line-1');
      const service = await b.connect('plant', PLANT_AGENT);
      const upBefore = b.link.bytesFromClients;
      // A plant round: announcement and model (retained), a line's status and its 1 MiB update.
      await plantAggregator.publishAsync(`${PLANT_ROOT}/round`, randomBytes(300), { qos: 1, retain: true });
      await plantAggregator.publishAsync(`${PLANT_ROOT}/model/1/0`, randomBytes(CHUNK_BYTES), { qos: 1, retain: true });
      await line.publishAsync(`${PLANT_ROOT}/agent/line-1/status`, Buffer.from('{"state":"uploading"}'), { qos: 1, retain: true });
      for (let seq = 0; seq < 4; seq++) await line.publishAsync(`${PLANT_ROOT}/round/1/update/line-1`, randomBytes(CHUNK_BYTES), { qos: 1 });
      await waitFor("the line's update at the plant aggregator", () => updates.length === 5, 30_000);
      // Then the plant's own status upstream: once it is at HQ, anything published before it would have crossed too.
      const status = Buffer.from(JSON.stringify({ v: 1, agent: PLANT_AGENT, state: 'idle' }));
      await service.publishAsync(`${HQ_ROOT}/agent/${PLANT_AGENT}/status`, status, { qos: 1, retain: true });
      await waitFor("the plant's status at HQ", () => statusAtHq.some((m) => m.payload.equals(status)), 30_000);
      const upBytes = b.link.bytesFromClients - upBefore;
      // The status publish (~130 bytes) and perhaps a PINGREQ: far below one chunk of the plant's traffic.
      assert.ok(upBytes < status.length + 512, `${upBytes} bytes crossed to HQ while the plant moved ${mib(5 * CHUNK_BYTES)} MiB locally`);
      console.log(`bridge (${hqKind} HQ): plant-local round traffic of ${mib(5 * CHUNK_BYTES)} MiB -> ${upBytes} bytes into HQ (the plant's status only)`);
    });
  });
}

test('bridge: HQ restarted, the bridge reconnects: what was queued at the plant goes up, new HQ state comes down', { skip, timeout: 180_000 }, async () => {
  await withBrokers('bridge-restart', 'mosquitto', async (b) => {
    // The HQ aggregator with a persistent session, as fedline's services keep theirs.
    const agg = await b.connect('hq', 'aggregator', { clean: false, reconnectPeriod: 200 });
    const atHq = await subscribeAll(agg, [`${HQ_ROOT}/round/+/update/+`]);
    await agg.publishAsync(`${HQ_ROOT}/model/1/0`, randomBytes(CHUNK_BYTES), { qos: 1, retain: true });
    const service = await b.connect('plant', PLANT_AGENT, { reconnectPeriod: 200 });
    const down = await subscribeAll(service, [`${HQ_ROOT}/round`, `${HQ_ROOT}/model/#`]);
    await waitFor('the model chunk at the plant', () => down.length === 1, 30_000);

    await b.stopHq();
    // Published while HQ is down: the plant broker queues it for the bridge (local_cleansession false).
    const queued = randomBytes(CHUNK_BYTES);
    await service.publishAsync(`${HQ_ROOT}/round/8/update/${PLANT_AGENT}`, queued, { qos: 1 });
    const downBefore = b.link.bytesToClients;
    await b.startHq();
    await waitFor('the queued chunk at HQ after the restart', () => atHq.some((m) => m.payload.equals(queued)), 60_000);
    const round = randomBytes(300);
    await agg.publishAsync(`${HQ_ROOT}/round`, round, { qos: 1, retain: true });
    await waitFor('the new announcement at the plant', () => payloadOf(down, `${HQ_ROOT}/round`)?.equals(round) === true, 30_000);
    assert.equal(atHq.filter((m) => m.payload.equals(queued)).length, 1, 'the queued chunk arrived once');
    // Failed retries while HQ was down may repeat "0": the changes, not every report.
    const changes = b.bridgeStates.filter((state, i, all) => i === 0 || state !== all[i - 1]);
    assert.deepEqual(changes.slice(-3), ['1', '0', '1'], 'the bridge went down and came back');
    // The bridge subscribes again at every connect, and MQTT sends the retained messages again: the model chunk came down twice.
    const downBytes = b.link.bytesToClients - downBefore;
    assert.ok(downBytes > CHUNK_BYTES, `the retained chunk came down again after the reconnect (${downBytes} bytes)`);
    console.log(
      `bridge: reconnect after an HQ restart: ${downBytes} bytes down (the retained model of ${mib(CHUNK_BYTES)} MiB sent again, plus the new announcement)`,
    );
  });
});

for (const hqKind of ['mosquitto', 'embedded'] as const) {
  test(
    `bridge to ${hqKind} HQ: the plant's link is down for a while: HQ's ack and new announcement wait in the bridge's session at HQ, the plant's update at the plant; both cross once it is back`,
    { skip, timeout: 180_000 },
    async () => {
      await withBrokers(`bridge-outage-${hqKind}`, hqKind, async (b) => {
        const agg = await b.connect('hq', 'aggregator');
        const atHq = await subscribeAll(agg, [`${HQ_ROOT}/round/+/update/+`]);
        const service = await b.connect('plant', PLANT_AGENT);
        const down = await subscribeAll(service, [`${HQ_ROOT}/round`, `${HQ_ROOT}/round/+/ack/${PLANT_AGENT}`]);

        b.link.setDown(true); // the WAN link: connections cut, new ones refused
        await b.waitBridge(false);
        const round = randomBytes(300);
        await agg.publishAsync(`${HQ_ROOT}/round/3/ack/${PLANT_AGENT}`, Buffer.from('missing 4,5'), { qos: 1 });
        await agg.publishAsync(`${HQ_ROOT}/round`, round, { qos: 1, retain: true });
        const update = randomBytes(CHUNK_BYTES);
        await service.publishAsync(`${HQ_ROOT}/round/3/update/${PLANT_AGENT}`, update, { qos: 1 });
        b.link.setDown(false);
        await b.waitBridge(true);

        await waitFor(
          'the ack and announcement at the plant',
          () => down.some((m) => m.payload.equals(round)) && down.some((m) => m.payload.toString() === 'missing 4,5'),
          30_000,
        );
        await waitFor('the update at HQ', () => atHq.some((m) => m.payload.equals(update)), 30_000);
        assert.equal(down.filter((m) => m.payload.toString() === 'missing 4,5').length, 1, 'the ack came once');
        assert.equal(atHq.filter((m) => m.payload.equals(update)).length, 1, 'the update came once');
      });
    },
  );
}
