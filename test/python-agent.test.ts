import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startBroker } from '../broker/main.js';
import { startAggregator, type RunningAggregator } from '../aggregator/main.js';
import { startAgent } from '../edge-agent/main.js';
import { parseConfig } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { fedAvg } from '../shared/fl/fedavg.js';
import { generateSigningKeys, signModel } from '../shared/protocol/model-signature.js';
import { agentStatusSchema, type UpdateMeta } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle, elementCount, type DecodedBundle } from '../shared/bundle/tensor-bundle.js';
import { decodeValues, type UpdateEncoding } from '../shared/bundle/value-encodings.js';
import { silentLogger } from '../shared/util/logger.js';
import { captureUpdates } from './federation-checks.js';
import { mesObserver } from './mes-observer.js';
import { agentConfig, aggregatorConfig, captureLogger, REPO_ROOT, tempDir, testAccess, testPassword, tinyDataset, waitFor, writeAuthFiles } from './helpers.js';

/**
 * A second implementation of the agent side, in Python (test/interop/fedline_agent.py, written
 * from docs/protocol.md), joins real federations: embedded Aedes with logins, the real
 * aggregator, alone or next to a TypeScript agent. Its updates must be accepted in every
 * encoding, averaged exactly, repaired when a chunk is lost, and its last will must reach the
 * aggregator when it is killed.
 */
const PYTHON = '/usr/bin/python3';
const AGENT_PY = join(REPO_ROOT, 'test', 'interop', 'fedline_agent.py');

function pythonProblem(): string | false {
  const r = spawnSync(PYTHON, ['-c', 'import msgpack, paho.mqtt.client'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} is not there (${r.error.message})`;
  if (r.status !== 0)
    return `${PYTHON} lacks msgpack or paho-mqtt (apt-get install python3-msgpack python3-paho-mqtt; .ci/run installs them): ${r.stderr.trim().split('\n').at(-1)}`;
  return false;
}
const noPython = pythonProblem();

type LogLine = Record<string, unknown> & { event: string };

/** The aggregator's flow-control window where only Python agents send (its minimum, shared by two uploads). */
const WINDOW_CHUNKS = 8;

/** The Python agent as a child process; every stdout line is one JSON object. */
class PythonAgent {
  readonly lines: LogLine[] = [];
  private stderr = '';
  private readonly proc: ChildProcess;
  private readonly exited: Promise<void>;

  constructor(args: string[]) {
    this.proc = spawn(PYTHON, [AGENT_PY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    this.proc.stdout!.on('data', (d: Buffer) => {
      const text = partial + d.toString('utf8');
      const parts = text.split('\n');
      partial = parts.pop()!;
      for (const line of parts) if (line.trim()) this.lines.push(JSON.parse(line) as LogLine);
    });
    this.proc.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString('utf8')));
    this.exited = new Promise((resolve) => this.proc.once('exit', () => resolve()));
  }

  get exitCode(): number | null {
    return this.proc.exitCode;
  }

  events(event: string): LogLine[] {
    return this.lines.filter((l) => l.event === event);
  }

  async waitFor(event: string, timeoutMs = 30_000): Promise<LogLine> {
    await waitFor(
      `python agent: ${event} (stderr: ${this.stderr.slice(-500)})`,
      () => {
        if (this.proc.exitCode !== null) throw new Error(`python agent exited with ${this.proc.exitCode}: ${this.stderr.slice(-2000)}`);
        return this.events(event).length > 0;
      },
      timeoutMs,
    );
    return this.events(event)[0]!;
  }

  /** SIGTERM (a clean stop: offline status, DISCONNECT), SIGKILL after 5 s; or SIGKILL at once. */
  async stop(sig: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(sig);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}

interface Federation {
  aggregator: RunningAggregator;
  aggregatorLog: Record<string, unknown>[];
  observer: Awaited<ReturnType<typeof captureUpdates>>;
  mes: Awaited<ReturnType<typeof mesObserver>>;
  /** `site-a`, the one with `pythonArgs`; then `site-c` when there are two. */
  python: PythonAgent;
  pythons: PythonAgent[];
  /** Ends everything started, newest first. */
  cleanup(): Promise<void>;
}

/**
 * Broker with logins + aggregator + the Python agent `site-a`, and either a TypeScript agent
 * `site-b` or a second Python agent `site-c` (other seed and sample count), so that the average
 * is a real one.
 */
async function startFederation(o: {
  encoding: UpdateEncoding;
  delta: boolean;
  withTsAgent: boolean;
  sign?: boolean;
  pythonArgs?: string[];
}): Promise<Federation> {
  const undo: (() => Promise<void>)[] = [];
  const cleanup = async () => {
    for (const u of undo.reverse()) await u().catch(() => undefined);
  };
  try {
    const tmp = tempDir('python-agent');
    undo.push(async () => tmp.cleanup());
    const dir = tmp.path;
    const agents = o.withTsAgent ? ['site-a', 'site-b'] : ['site-a', 'site-c'];
    // Two observers need two logins: the broker takes the user name as the client id, so a second
    // connection as `auditor` would take over the first one's session.
    const access = testAccess(agents);
    access.users.push({ ...access.users.find((u) => u.username === 'auditor')!, username: 'mes-auditor' });
    const auth = writeAuthFiles(dir, access);
    const broker = await startBroker(
      parseConfig(brokerConfigSchema, { host: '127.0.0.1', port: 0, auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile } }, 'test broker'),
      silentLogger(),
    );
    undo.push(() => broker.close());
    const observer = await captureUpdates(broker.url, 'fl/test', auth.credentials('auditor'));
    undo.push(() => observer.close());
    const mes = await mesObserver(broker.url, auth.credentials('mes-auditor'));
    undo.push(() => mes.close());
    let signingKeyFile: string | undefined;
    let publicKeyFile: string | undefined;
    if (o.sign) {
      const keys = generateSigningKeys();
      signingKeyFile = join(dir, 'model-signing.key');
      publicKeyFile = join(dir, 'model-signing.pub');
      writeFileSync(signingKeyFile, keys.privatePem, { mode: 0o600 });
      writeFileSync(publicKeyFile, keys.publicPem);
    }
    // Without the TypeScript agent: small chunks and a small window, so that the Python agents'
    // uploads run into the aggregator's flow control (progress acks, credit).
    const fedOptions = { url: broker.url, dir, agents, rounds: 1, chunkBytes: o.withTsAgent ? 4096 : 1024, auth: auth.credentials };
    const { logger, lines } = captureLogger();
    const aggregator = await startAggregator(
      aggregatorConfig({
        ...fedOptions,
        aggregator: { encoding: o.encoding, delta: o.delta, windowChunks: o.withTsAgent ? 256 : WINDOW_CHUNKS, ...(signingKeyFile ? { signingKeyFile } : {}) },
      }),
      logger,
    );
    undo.push(() => aggregator.close());
    const pythons: PythonAgent[] = [];
    for (const [agent, samples, seed] of o.withTsAgent
      ? ([['site-a', 30, 5]] as const)
      : ([
          ['site-a', 30, 5],
          ['site-c', 55, 9],
        ] as const)) {
      const passwordFile = join(dir, `${agent}.password`);
      writeFileSync(passwordFile, testPassword(agent), { mode: 0o600 });
      const python = new PythonAgent([
        '--url',
        broker.url,
        '--federation',
        'test',
        '--agent',
        agent,
        '--password-file',
        passwordFile,
        '--samples',
        String(samples),
        '--seed',
        String(seed),
        ...(publicKeyFile ? ['--model-public-key', publicKeyFile] : []),
        ...(agent === 'site-a' ? (o.pythonArgs ?? []) : []),
      ]);
      undo.push(() => python.stop());
      pythons.push(python);
    }
    for (const p of pythons) await p.waitFor('connected', 15_000);
    if (o.withTsAgent) {
      await tinyDataset(join(dir, 'data'), ['site-b']);
      const ts = await startAgent(
        agentConfig({ ...fedOptions, ...(publicKeyFile ? { agent: { modelPublicKeyFile: publicKeyFile } } : {}) }, 'site-b'),
        silentLogger(),
      );
      undo.push(() => ts.close());
    }
    return { aggregator, aggregatorLog: lines, observer, mes, python: pythons[0]!, pythons, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/**
 * The stored version 1 against a float64 FedAvg of the updates the observer saw, decoded as the
 * aggregator decodes them (f16/q8 to float32, differences added to the base in float32). Returns
 * the largest absolute difference.
 */
async function assertFedAvg(fed: Federation, updates: DecodedBundle<UpdateMeta>[]): Promise<number> {
  const store = fed.aggregator.store;
  const base = new Map(bundleTensors(decodeBundle(await store.readBundle(0))).map((t) => [t.name, t.data]));
  const global = new Map(bundleTensors(decodeBundle(await store.readBundle(1))).map((t) => [t.name, t.data]));
  const inputs = updates.map((u) => {
    const tensors = new Map<string, Float32Array>();
    for (const spec of u.header.tensors) {
      const values = new Float32Array(elementCount(spec.shape));
      decodeValues(spec.dtype, u.bytes.subarray(u.payloadStart + spec.offset), values.length, values, spec.block);
      if (u.header.meta.delta) {
        const b = base.get(spec.name)!;
        for (let i = 0; i < values.length; i++) values[i] = values[i]! + b[i]!; // stored as float32, like the aggregator
      }
      tensors.set(spec.name, values);
    }
    return { id: u.header.meta.agent, weight: u.header.meta.sampleCount, tensors };
  });
  const names = [...inputs[0]!.tensors.keys()];
  assert.deepEqual(names.slice().sort(), [...global.keys()].sort(), 'every tensor was federated');
  const total = inputs.reduce((s, i) => s + i.weight, 0);
  let maxDiff = 0;
  let compared = 0;
  for (const name of names) {
    const got = global.get(name)!;
    for (let i = 0; i < got.length; i++) {
      let ref = 0;
      for (const inp of inputs) ref += inp.weight * inp.tensors.get(name)![i]!;
      ref /= total;
      const diff = Math.abs(got[i]! - ref);
      // Rounding the float64 average to float32: at most half an ulp (2^-24 relative).
      assert.ok(diff <= 2 ** -24 * Math.abs(ref) * (1 + 1e-9) + 1e-30, `${name}[${i}] = ${got[i]}, float64 FedAvg ${ref}`);
      maxDiff = Math.max(maxDiff, diff);
      compared++;
    }
  }
  assert.ok(compared > 1000, `compared ${compared} weights`);
  // And the library's own FedAvg over the same decoded inputs gives the same bits.
  const lib = fedAvg(inputs, names);
  for (const name of names)
    assert.ok(
      Buffer.from(lib.get(name)!.buffer).equals(Buffer.from(global.get(name)!.buffer, global.get(name)!.byteOffset, global.get(name)!.byteLength)),
      `${name}: bit-identical to fedAvg()`,
    );
  return maxDiff;
}

/** Run the federation to its end; the Python agent's update must be accepted and averaged. */
async function runAndCheck(t: { diagnostic(msg: string): void }, fed: Federation, o: { encoding: UpdateEncoding; delta: boolean; agents: string[] }) {
  const result = await fed.aggregator.aggregator.run();
  const train = result.rounds[0]!;
  assert.equal(train.outcome, 'aggregate', `round 1: ${train.reason}; failures ${JSON.stringify(train.failures)}`);
  assert.deepEqual([...train.participants].sort(), o.agents);
  assert.equal(train.encoding, o.encoding);
  assert.equal(train.delta, o.delta);
  assert.equal(result.finalVersion, 1);
  assert.equal(result.rounds[1]?.kind, 'evaluate');
  assert.deepEqual(Object.keys(result.rounds[1]!.baseMetrics).sort(), o.agents, 'every agent, Python ones included, reported in the evaluation round');
  for (const p of fed.pythons) assert.equal(p.events('update-accepted').length, 1);
  const accepted = fed.python.events('update-accepted');
  const updates = o.agents.map((a) => fed.observer.updates.get(`1/${a}`)!);
  assert.ok(updates.every(Boolean), 'the observer saw every update');
  const mine = updates[0]!;
  assert.equal(mine.header.meta.agent, 'site-a');
  assert.equal(mine.header.meta.sampleCount, 30);
  const dtype = { f32: 'float32', f16: 'float16', q8: 'q8' }[o.encoding];
  assert.ok(
    mine.header.tensors.every((s) => s.dtype === dtype),
    `the Python agent's update is ${dtype}`,
  );
  assert.equal(mine.header.meta.delta, o.delta);
  const maxDiff = await assertFedAvg(fed, updates);
  // What an MES sees of the Python agents: statuses and agent-state events as documented.
  assert.deepEqual(fed.mes.invalid, []);
  for (const p of ['site-a', 'site-c'].filter((a) => o.agents.includes(a))) {
    for (const st of fed.mes.of(p)) assert.ok(agentStatusSchema.safeParse(st).success, `status ${JSON.stringify(st)}`);
    const states = fed.mes
      .ofType('agent-state')
      .filter((e) => e.agent === p)
      .map((e) => e.state);
    for (const s of ['downloading', 'evaluating', 'training', 'uploading', 'idle'])
      assert.ok(states.includes(s), `${p} announced state ${s}: ${states.join(', ')}`);
  }
  if (!o.agents.includes('site-b')) {
    // Only Python agents: their uploads were held to the aggregator's window.
    for (const p of fed.pythons) {
      const a = p.events('update-accepted')[0]!;
      assert.equal(a.window, WINDOW_CHUNKS);
      assert.ok((a.progressAcks as number) > 0, `progress acks: ${JSON.stringify(a)}`);
      assert.ok(
        (a.maxAhead as number) <= WINDOW_CHUNKS && (a.chunks as number) > WINDOW_CHUNKS,
        `at most ${WINDOW_CHUNKS} chunks beyond those stored: ${JSON.stringify(a)}`,
      );
    }
  }
  t.diagnostic(
    `${o.encoding}${o.delta ? '+delta' : ''}: round ${train.durationMs} ms, max |new model - float64 FedAvg| ${maxDiff.toExponential(2)}, ` +
      `python update ${accepted[0]!.bytes as number} bytes in ${accepted[0]!.chunks as number} chunks, ${accepted[0]!.sentBytes as number} bytes sent (resent chunks ${accepted[0]!.resentChunks as number}; window ${accepted[0]!.window as number}, ` +
      `${accepted[0]!.progressAcks as number} progress acks, ${accepted[0]!.creditWaits as number} credit waits, up to ${accepted[0]!.maxAhead as number} chunks ahead), round bytesUp ${train.bytesUp}`,
  );
  return { result, accepted: accepted[0]! };
}

test(
  'f32 next to a TypeScript agent: the Python update is accepted and averaged exactly; a dropped chunk is listed missing, resent and accepted',
  { skip: noPython, timeout: 120_000 },
  async (t) => {
    const fed = await startFederation({ encoding: 'f32', delta: false, withTsAgent: true, pythonArgs: ['--drop-chunk', '3'] });
    t.after(() => fed.cleanup());
    const { accepted } = await runAndCheck(t, fed, { encoding: 'f32', delta: false, agents: ['site-a', 'site-b'] });
    // The repair path, from the agent's log: dropped, the aggregator's ack listed exactly it, resent, accepted.
    assert.deepEqual(
      fed.python.events('chunk-dropped').map((l) => l.seq),
      [3],
    );
    const incomplete = fed.python.events('ack-incomplete');
    assert.ok(incomplete.length >= 1 && (incomplete[0]!.missing as number[]).join() === '3', `ack-incomplete: ${JSON.stringify(incomplete)}`);
    assert.deepEqual(fed.python.events('chunks-resent')[0]!.seqs, [3]);
    assert.equal(accepted.resentChunks, 1);
    assert.equal(fed.aggregator.aggregator.counters.get('accepted-update'), 2);
  },
);

test(
  'f16 + delta, signed models, two Python agents: both verify the Ed25519 signatures, their updates are accepted and averaged exactly',
  { skip: noPython, timeout: 120_000 },
  async (t) => {
    const fed = await startFederation({ encoding: 'f16', delta: true, withTsAgent: false, sign: true });
    t.after(() => fed.cleanup());
    await runAndCheck(t, fed, { encoding: 'f16', delta: true, agents: ['site-a', 'site-c'] });
    for (const p of fed.pythons)
      assert.deepEqual(
        p.events('signature-verified').map((l) => l.version),
        [0, 1],
        'base of the training round and of the evaluation round',
      );
  },
);

test(
  'q8 + delta, two Python agents: accepted and averaged exactly; SIGKILL makes the aggregator see the killed one offline (last will)',
  { skip: noPython, timeout: 120_000 },
  async (t) => {
    const fed = await startFederation({ encoding: 'q8', delta: true, withTsAgent: false });
    t.after(() => fed.cleanup());
    await runAndCheck(t, fed, { encoding: 'q8', delta: true, agents: ['site-a', 'site-c'] });
    const offline = () => fed.aggregatorLog.some((l) => l.msg === 'agent offline' && l.agent === 'site-a');
    assert.ok(!offline(), 'online until killed');
    const killedAt = Date.now();
    await fed.python.stop('SIGKILL');
    await waitFor('the aggregator to see site-a offline', offline, 10_000);
    assert.ok(!fed.aggregatorLog.some((l) => l.msg === 'agent offline' && l.agent === 'site-c'), 'the other agent stays online');
    // A clean stop (SIGTERM) suppresses the last will: the agent says offline itself, then exits 0.
    await fed.pythons[1]!.stop('SIGTERM');
    assert.equal(fed.pythons[1]!.exitCode, 0);
    assert.equal(fed.pythons[1]!.events('stopped').length, 1);
    await waitFor('the aggregator to see site-c offline', () => fed.aggregatorLog.some((l) => l.msg === 'agent offline' && l.agent === 'site-c'), 10_000);
    t.diagnostic(`last will seen by the aggregator ${Date.now() - killedAt} ms after SIGKILL`);
  },
);

test(
  "the Python Ed25519 check (RFC 8032, no library) accepts the aggregator's signature and refuses it for another version or bundle",
  { skip: noPython },
  () => {
    const dir = tempDir('python-sig');
    try {
      const keys = generateSigningKeys();
      const sha = 'ab'.repeat(32);
      writeFileSync(join(dir.path, 'model.pub'), keys.publicPem);
      const signature = signModel(createPrivateKey(keys.privatePem), 7, sha);
      const script = [
        'import sys',
        `sys.path.insert(0, ${JSON.stringify(join(REPO_ROOT, 'test', 'interop'))})`,
        'import fedline_agent as fa',
        `k = fa.load_public_key(${JSON.stringify(join(dir.path, 'model.pub'))})`,
        `print(fa.model_signature_ok(k, 7, "${sha}", "${signature}"), fa.model_signature_ok(k, 8, "${sha}", "${signature}"), fa.model_signature_ok(k, 7, "${'cd'.repeat(32)}", "${signature}"), fa.model_signature_ok(k, 7, "${sha}", None))`,
      ].join('\n');
      // -B: no __pycache__ beside the module in the source tree.
      const r = spawnSync(PYTHON, ['-B', '-c', script], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), 'True False False False');
    } finally {
      dir.cleanup();
    }
  },
);
