import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import mqtt, { type MqttClient } from 'mqtt';
import { mayPublishRetained, rightsFor } from '../broker/access.js';
import { LoginThrottle, TaskLimiter } from '../broker/login-throttle.js';
import { PacketGuard } from '../broker/packet-guard.js';
import { hashPassword } from '../broker/passwords.js';
import { freePort, mosquittoAvailable, startMosquitto, tempDir, testAccess, testPassword, waitFor, writeAuthFiles } from './helpers.js';
import { ProcessFederation } from './support/process-federation.js';
import { connectPacket, oversizedConnect, rawLogin, remainingLength, rssMb } from './support/raw-mqtt.js';

const mosquitto = mosquittoAvailable();

/**
 * Broker hardening (issue 12): clients that never log in cannot grow the broker, password guessing
 * does not slow the honest clients, and retained publishes only where the protocol keeps state.
 * The broker runs as its own process (`fedline broker --config`) so that its memory and latency
 * are its own.
 */

test('packet guard: sizes are checked from the fixed header, before the packet is buffered', () => {
  const g = new PacketGuard({ maxPacketBytes: 1000, maxBytesBeforeLogin: 200 });
  assert.equal(g.feed(connectPacket('c', 'u', 'p')), null, 'a normal CONNECT passes');
  const big = new PacketGuard({ maxPacketBytes: 1000, maxBytesBeforeLogin: 200 });
  assert.match(
    big.feed(Buffer.concat([Buffer.from([0x10]), remainingLength(200 * 1024 * 1024)])) ?? '',
    /announced a \d+-byte packet, above the 200-byte limit before login/,
  );
  // Byte by byte, the same answer: the header may arrive split.
  const split = new PacketGuard({ maxPacketBytes: 1000, maxBytesBeforeLogin: 200 });
  const header = Buffer.concat([Buffer.from([0x10]), remainingLength(5000)]);
  const answers = [...header].map((b) => split.feed(Buffer.from([b])));
  assert.equal(answers.filter((a) => a !== null).length, 1);
  // After the login, the packet limit applies; a stream of packets is followed across chunks.
  const after = new PacketGuard({ maxPacketBytes: 1000, maxBytesBeforeLogin: 200 });
  after.loginAccepted();
  const publish = (n: number) => Buffer.concat([Buffer.from([0x30]), remainingLength(n), Buffer.alloc(n)]);
  const stream = Buffer.concat([publish(900), publish(0), publish(500), publish(990)]);
  for (let i = 0; i < stream.length; i += 77) assert.equal(after.feed(stream.subarray(i, i + 77)), null);
  assert.match(after.feed(publish(2000)) ?? '', /above the 1000-byte limit$/);
  // Bytes before the login are counted, whatever their packets: a small CONNECT followed by a flood of PUBLISHes is cut.
  const flood = new PacketGuard({ maxPacketBytes: 1000, maxBytesBeforeLogin: 200 });
  assert.equal(flood.feed(connectPacket('c', 'u', 'p')), null);
  assert.match(flood.feed(Buffer.concat([publish(100), publish(100)])) ?? '', /more than 200 bytes before its login/);
  assert.match(new PacketGuard({ maxPacketBytes: 1000, maxBytesBeforeLogin: 200 }).feed(Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x01])) ?? '', /malformed/);
});

test('login throttle: free failures, then a doubling shut-out per address; memory bounded; a login does not reset it', async () => {
  let now = 0;
  const t = new LoginThrottle({ freeFailures: 2, baseDelayMs: 1000, maxDelayMs: 4000, forgetAfterMs: 60_000, maxAddresses: 3 }, () => now);
  assert.deepEqual([t.failed('a'), t.failed('a'), t.failed('a'), t.failed('a'), t.failed('a'), t.failed('a')], [0, 0, 1000, 2000, 4000, 4000]);
  assert.equal(t.blockedFor('a'), 4000);
  assert.equal(t.blockedFor('b'), 0, 'another address is not affected');
  now += 4000;
  assert.equal(t.blockedFor('a'), 0);
  assert.equal(t.failed('a'), 4000, 'the count is kept after the shut-out');
  for (const x of ['b', 'c', 'd', 'e']) t.failed(x);
  assert.equal(t.size(), 3, 'at most maxAddresses remembered');
  now += 70_000;
  assert.equal(t.blockedFor('e'), 0);
  assert.equal(t.failed('e'), 0, 'forgotten after forgetAfterMs: free failures again');

  const limiter = new TaskLimiter(1, 1);
  let running = 0;
  let most = 0;
  const task = async () => {
    most = Math.max(most, ++running);
    await new Promise((r) => setTimeout(r, 20));
    running--;
    return 'done';
  };
  const results = await Promise.all([limiter.run(task), limiter.run(task), limiter.run(task)]);
  assert.deepEqual(results, ['done', 'done', null], 'one runs, one waits, the third is turned away');
  assert.equal(most, 1);
});

test('retained publishes: only round, model/#, an agent status and the extra write filters', () => {
  const agg = rightsFor({ username: 'aggregator', role: 'aggregator', read: [], write: [] }, 'fl/x');
  assert.ok(mayPublishRetained(agg, 'fl/x/round') && mayPublishRetained(agg, 'fl/x/model/latest') && mayPublishRetained(agg, 'fl/x/model/3/0'));
  assert.ok(!mayPublishRetained(agg, 'fl/x/events/model-published') && !mayPublishRetained(agg, 'fl/x/round/3/ack/site-a'));
  const agent = rightsFor({ username: 'site-a', role: 'agent', read: [], write: [] }, 'fl/x');
  assert.ok(mayPublishRetained(agent, 'fl/x/agent/site-a/status'));
  assert.ok(!mayPublishRetained(agent, 'fl/x/events/agent-state/site-a') && !mayPublishRetained(agent, 'fl/x/round/3/update/site-a'));
  const mes = rightsFor({ username: 'mes', role: 'mes', read: [], write: ['mes/#'] }, 'fl/x');
  assert.ok(mayPublishRetained(mes, 'mes/line-b/state'), 'the MES line state is best retained');
  assert.ok(!mayPublishRetained(mes, 'fl/x/cmd/stop'));
});

async function brokerProcess(dir: string, hashedUsers: string[] = []) {
  const auth = writeAuthFiles(dir, testAccess());
  if (hashedUsers.length > 0) {
    // These users get the production PBKDF2 count (100,000 rounds), so that checking them costs what it costs in a plant.
    const lines = readFileSync(auth.passwordFile, 'utf8')
      .trim()
      .split('\n')
      .map((l) => {
        const user = l.slice(0, l.indexOf(':'));
        return hashedUsers.includes(user) ? `${user}:${hashPassword(testPassword(user))}` : l;
      });
    writeFileSync(auth.passwordFile, lines.join('\n') + '\n');
  }
  const procs = new ProcessFederation(dir);
  const port = await freePort();
  const config = procs.writeConfig('broker', {
    host: '127.0.0.1',
    port,
    logLevel: 'info',
    auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile },
  });
  const started = await procs.start('broker', 'broker', config);
  const log = () => readFileSync(join(dir, 'logs', 'broker.log'), 'utf8');
  return { procs, port, url: `mqtt://127.0.0.1:${port}`, pid: started.proc.pid!, auth, log };
}

function connect(url: string, login: { username: string; password: string }): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { protocolVersion: 4, clean: true, reconnectPeriod: 0, connectTimeout: 30_000, clientId: login.username, ...login });
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      reject(err);
    });
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

/** Four clients announce 200 MB CONNECTs and stream them; the broker's RSS (MB) before, at its peak and after. */
async function oversizeAttack(pid: number, port: number, closed: () => boolean): Promise<void> {
  const before = rssMb(pid);
  let peak = before;
  const poll = setInterval(() => (peak = Math.max(peak, rssMb(pid))), 10);
  const attacks = await Promise.all([0, 1, 2, 3].map(() => oversizedConnect(port, 200 * 1024 * 1024)));
  await waitFor('the broker to close the four connections', closed, 30_000);
  await new Promise((r) => setTimeout(r, 500));
  clearInterval(poll);
  const after = rssMb(pid);
  console.log(
    `# broker RSS: before ${before.toFixed(1)} MB, peak during the attack ${peak.toFixed(1)} MB (+${(peak - before).toFixed(1)}), ` +
      `after ${after.toFixed(1)} MB (+${(after - before).toFixed(1)}); bytes each attacker got in before the broker closed it: ${attacks.map((a) => a.sent).join(', ')}`,
  );
  for (const a of attacks) {
    assert.ok(a.closedByBroker, 'the broker closed the connection');
    assert.ok(a.sent < 50 * 1024 * 1024, `closed early: ${a.sent} bytes sent`);
  }
  assert.ok(peak - before < 50, `peak RSS +${(peak - before).toFixed(1)} MB`);
  assert.ok(after - before < 50, `RSS after close +${(after - before).toFixed(1)} MB`);
}

test(
  'four unfinished 200 MB CONNECTs from clients that never log in: the broker (its own process) stays within +50 MB of RSS and serves on',
  { timeout: 180_000 },
  async () => {
    const dir = tempDir('harden-size');
    const b = await brokerProcess(dir.path);
    try {
      // Warm up: one honest client connects and publishes, so that the baseline holds what serving costs.
      const honest = await connect(b.url, b.auth.credentials('site-a'));
      await honest.publishAsync('fl/test/agent/site-a/status', 'warm', { qos: 1 });
      await oversizeAttack(b.pid, b.port, () => (b.log().match(/FL_MSG_OVERSIZE/g) ?? []).length >= 4);
      assert.match(b.log(), /announced a \d+-byte packet, above the 65536-byte limit before login/);
      // The honest client was not disturbed, and new logins work.
      await honest.publishAsync('fl/test/agent/site-a/status', 'still here', { qos: 1 });
      const late = await connect(b.url, b.auth.credentials('site-b'));
      late.end(true);
      honest.end(true);
    } finally {
      await b.procs.stopAll();
      dir.cleanup();
    }
  },
);

test(
  'the same attack on Mosquitto with the repository mosquitto.conf: max_packet_size keeps it within +50 MB',
  { skip: mosquitto ? false : 'mosquitto is not installed', timeout: 180_000 },
  async () => {
    const dir = tempDir('harden-size-mosq');
    const mosq = await startMosquitto(mosquitto!, dir.path);
    try {
      const honest = await connect(mosq.url, mosq.auth.credentials('site-a'));
      await honest.publishAsync('fl/test/agent/site-a/status', 'warm', { qos: 1 });
      await oversizeAttack(mosq.proc.pid!, mosq.port, () => true);
      await honest.publishAsync('fl/test/agent/site-a/status', 'still here', { qos: 1 });
      honest.end(true);
    } finally {
      await mosq.stop();
      dir.cleanup();
    }
  },
);

/** PUBACK latencies (ms) of `n` QoS 1 publishes, one after the other, `gapMs` apart. */
async function pubackLatencies(c: MqttClient, n: number, gapMs: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await c.publishAsync('fl/test/agent/site-a/status', `sample ${i}`, { qos: 1 });
    out.push(performance.now() - t0);
    await new Promise((r) => setTimeout(r, gapMs));
  }
  return out;
}

/** 20 wrong-password logins per second until stop(); `address(i)` is the source address of the i-th. */
function badLoginFlood(port: number, address: (i: number) => string | undefined) {
  const codes: (number | null)[] = [];
  const pending = new Set<Promise<void>>();
  let i = 0;
  const timer = setInterval(() => {
    const p = rawLogin(port, i % 2 ? 'site-b' : 'nobody', 'guess', address(i++)).then((code) => {
      codes.push(code);
      pending.delete(p);
    });
    pending.add(p);
  }, 50);
  return {
    codes,
    async stop() {
      clearInterval(timer);
      await Promise.all([...pending]);
    },
  };
}

/**
 * The password check runs off the event loop: with 20 bad logins a second an honest client's PUBACK
 * latency stays near what it is without them. A check on the event loop (PBKDF2 at 100,000 rounds
 * takes tens of milliseconds) would block the broker for most of every second, so its median would
 * rise by tens of milliseconds; the test allows 5 ms above three times the quiet median, which a
 * loaded machine does not reach and a blocking check cannot stay under. The absolute
 * figure (under 5 ms median) is a speed target and is measured by `npm run bench:logins`, which
 * runs this test with FEDLINE_LOGIN_REPORT set and prints the medians and ratios of each pass.
 */
test(
  '20 bad logins per second (PBKDF2 100,000 rounds) do not slow an honest client’s PUBACKs: the password check is off the event loop',
  { timeout: 240_000 },
  async () => {
    const dir = tempDir('harden-login');
    const b = await brokerProcess(dir.path, ['site-a', 'site-b']);
    try {
      const honest = await connect(b.url, b.auth.credentials('site-a'));
      await pubackLatencies(honest, 20, 5); // warm-up
      const baseline = median(await pubackLatencies(honest, 150, 10));
      // One address guessing (the throttle shuts it out after 5 failures).
      const one = badLoginFlood(b.port, () => '127.0.0.1');
      await waitFor('the first refusals', () => one.codes.length >= 3, 30_000);
      const oneAddress = median(await pubackLatencies(honest, 200, 10));
      await one.stop();
      // Every guess from a new address (127.0.1.x): every one costs a PBKDF2 check, on the thread pool.
      const many = badLoginFlood(b.port, (i) => `127.0.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`);
      await waitFor('the first refusals', () => many.codes.length >= 3, 30_000);
      const manyAddresses = median(await pubackLatencies(honest, 200, 10));
      await many.stop();
      const tally = (codes: (number | null)[]) => codes.reduce<Record<string, number>>((m, c) => ({ ...m, [String(c)]: (m[String(c)] ?? 0) + 1 }), {});
      console.log(
        `# PUBACK latency median: ${baseline.toFixed(2)} ms without attack, ${oneAddress.toFixed(2)} ms with 20 bad logins/s from one address ` +
          `(CONNACK codes ${JSON.stringify(tally(one.codes))}), ${manyAddresses.toFixed(2)} ms with 20 bad logins/s from new addresses ` +
          `(CONNACK codes ${JSON.stringify(tally(many.codes))})`,
      );
      // The benchmark's figures, written before the checks so that a failing pass is measured too.
      if (process.env.FEDLINE_LOGIN_REPORT) {
        const report = {
          baselineMs: baseline,
          oneAddressMs: oneAddress,
          newAddressesMs: manyAddresses,
          oneAddressCodes: tally(one.codes),
          newAddressCodes: tally(many.codes),
        };
        appendFileSync(process.env.FEDLINE_LOGIN_REPORT, JSON.stringify(report) + '\n');
      }
      assert.ok(!one.codes.includes(0) && !many.codes.includes(0), 'no guess got in');
      assert.ok(one.codes.filter((c) => c === 5).length > one.codes.length / 2, 'the guessing address was shut out (CONNACK 5 without a password check)');
      assert.ok(many.codes.filter((c) => c === 4).length > 0, 'wrong passwords from fresh addresses were checked (CONNACK 4)');
      for (const [what, m] of [
        ['one address', oneAddress],
        ['new addresses', manyAddresses],
      ] as const) {
        assert.ok(m < 3 * baseline + 5, `PUBACK median under the flood from ${what}: ${m.toFixed(2)} ms vs ${baseline.toFixed(2)} ms without`);
      }
      assert.match(b.log(), /too many failed logins from this address/);
      honest.end(true);
    } finally {
      await b.procs.stopAll();
      dir.cleanup();
    }
  },
);
