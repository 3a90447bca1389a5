import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createPublicKey } from 'node:crypto';
import { InspectionService } from '../edge-agent/inspect.js';
import { ModelCache } from '../edge-agent/model-cache.js';
import { TfjsClassifier } from '../training/tfjs-classifier.js';
import { loadTf } from '../training/backend.js';
import { addCandidate, checkGates, decide, emptyRegistry, release, rollback } from '../aggregator/release-policy.js';
import { aggregatorConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { releasedManifestSchema, type ReleasedManifest } from '../shared/protocol/mes.js';
import type { EvalMetrics } from '../shared/protocol/messages.js';
import { generateSigningKeys, verifyModelSignature, verifyReleaseSignature } from '../shared/protocol/model-signature.js';
import { createTopics } from '../shared/protocol/topics.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { silentLogger } from '../shared/util/logger.js';
import { captureLogger, REPO_ROOT, startAedes, startFederation, tempDir, waitFor } from './helpers.js';
import { mesObserver } from './mes-observer.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');
const run = promisify(execFile);
const topics = createTopics('fl/test');
const defaults = parseConfig(aggregatorConfigSchema.shape.release, {}, 'test');
const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];

/** Metrics with the given per-class recall counts out of 10 images per class. */
function metrics(correct: [number, number, number, number]): EvalMetrics {
  const confusion = correct.map((c, i) => CLASSES.map((_, j) => (i === j ? c : j === (i + 1) % 4 ? 10 - c : 0)));
  const recall = correct.map((c) => c / 10);
  const ba = recall.reduce((a, b) => a + b, 0) / 4;
  return { samples: 40, loss: null, accuracy: ba, balancedAccuracy: ba, confusion, precision: recall, recall };
}

test('release gates: minima, defect recall, regression per site against the released version; defaults only bound regression', () => {
  assert.deepEqual(
    { mode: defaults.mode, maxRegression: defaults.maxRegression, minBA: defaults.minBalancedAccuracy, minRecall: defaults.minDefectRecall },
    { mode: 'auto', maxRegression: 0.02, minBA: null, minRecall: null },
  );
  const released = { version: 3, metrics: { a: metrics([9, 8, 9, 9]), b: metrics([9, 9, 9, 9]) } };
  // b drops 0.05 against the released version: the regression gate fails for b only.
  let r = checkGates(defaults, CLASSES, { a: metrics([9, 9, 9, 9]), b: metrics([9, 7, 9, 8]) }, released);
  assert.equal(r.passed, false);
  assert.equal(r.against, 3);
  assert.deepEqual(
    r.failures.map((f) => [f.agent, f.gate, f.value, f.limit]),
    [['b', 'maxRegression', 0.075, 0.02]],
  );
  assert.equal(r.sites.a!.regression, -0.025);
  assert.equal(r.sites.b!.defectRecall, 0.7);
  // Within the tolerance: passes.
  r = checkGates(defaults, CLASSES, { a: metrics([9, 8, 9, 9]), b: metrics([9, 9, 9, 9]) }, released);
  assert.ok(r.passed, JSON.stringify(r.failures));
  // Absolute minima: balanced accuracy and defect recall (NOT_OKAY pooled).
  const strict = { ...defaults, minBalancedAccuracy: 0.85, minDefectRecall: 0.85, maxRegression: null };
  r = checkGates(strict, CLASSES, { a: metrics([10, 8, 10, 10]), b: metrics([8, 9, 8, 8]) }, released);
  assert.deepEqual(
    r.failures.map((f) => `${f.agent}:${f.gate}`),
    ['a:minDefectRecall', 'b:minBalancedAccuracy'],
  );
  // Too few sites evaluated.
  r = checkGates({ ...defaults, minSites: 2 }, CLASSES, { a: metrics([9, 9, 9, 9]) }, null);
  assert.deepEqual(
    r.failures.map((f) => f.gate),
    ['minSites'],
  );
});

test('registry transitions: candidate -> validated/rejected, release supersedes, rollback goes back to a version released before', () => {
  const d = emptyRegistry();
  for (const v of [0, 1, 2, 3]) addCandidate(d, { version: v, round: v, sha256: 'x'.repeat(64), signature: null }, 1);
  assert.ok(release(d, 0, 'initial', null, 1).ok);
  const pass = checkGates(defaults, CLASSES, { a: metrics([9, 9, 9, 9]) }, null);
  const fail = checkGates({ ...defaults, minBalancedAccuracy: 0.95 }, CLASSES, { a: metrics([9, 9, 9, 9]) }, null);
  assert.ok(decide(d, 1, pass, 2));
  assert.ok(!decide(d, 1, fail, 2), 'a decided version is not decided again');
  assert.ok(decide(d, 2, fail, 3));
  assert.deepEqual([d.versions[1]!.stage, d.versions[2]!.stage], ['validated', 'rejected']);
  assert.equal(rollback(d, undefined, 'op', null, 4).ok, false, 'nothing released before version 0');
  assert.ok(release(d, 1, 'policy', null, 5).ok);
  assert.equal(release(d, 1, 'op', null, 5).ok, false, 'released already');
  const t = release(d, 2, 'op', 'audit', 6);
  assert.ok(t.ok && /gates failed/.test(t.detail), 'an operator may release a rejected version; the detail says so');
  assert.equal(d.versions[1]!.stage, 'superseded');
  assert.equal(rollback(d, 3, 'op', null, 7).ok, false, 'never released: not a rollback target');
  const back = rollback(d, undefined, 'op', null, 8);
  assert.ok(back.ok && back.version === 1 && back.previous === 2);
  assert.deepEqual([d.versions[2]!.stage, d.versions[1]!.stage, d.released, d.releaseSeq], ['rolled-back', 'released', 1, 4]);
  const again = rollback(d, undefined, 'op', null, 9);
  assert.ok(again.ok && again.version === 0, 'the next rollback skips the rolled-back version');
  assert.deepEqual(
    d.history.map((h) => `${h.action}:${h.version}`),
    ['released:0', 'validated:1', 'rejected:2', 'released:1', 'released:2', 'rolled-back:1', 'rolled-back:0'],
  );
});

test(
  'model release on a real federation: rejected candidates never reach inspect; operator release and rollback by MES command and CLI switch it (logged); a pinned inspect never switches',
  { timeout: 300_000 },
  async () => {
    const dir = tempDir('release');
    const broker = await startAedes();
    const mes = await mesObserver(broker.url);
    const keys = generateSigningKeys();
    writeFileSync(join(dir.path, 'sign.key'), keys.privatePem);
    const pub = createPublicKey(keys.publicPem);
    const { tf } = await loadTf('cpu');
    const inspections: { service: InspectionService; transport: MqttTransport; lines: Record<string, unknown>[] }[] = [];
    const fed = await startFederation({
      url: broker.url,
      dir: dir.path,
      agents: ['site-a', 'site-b'],
      rounds: 2,
      // No tiny model reaches a balanced accuracy of 0.999 on both sites: every candidate fails this gate.
      aggregator: { signingKeyFile: join(dir.path, 'sign.key'), release: { ...defaults, minBalancedAccuracy: 0.999 } },
    });
    const inspect = async (name: string, pinned?: { version: number; sha256: string }) => {
      const { logger, lines } = captureLogger();
      const transport = await MqttTransport.connect({ url: broker.url, clientId: name, logger: silentLogger() });
      const service = new InspectionService({
        agentId: 'site-a',
        station: name,
        transport,
        topics,
        cache: new ModelCache(join(dir.path, name), silentLogger()),
        classifierFor: (bundle) => TfjsClassifier.fromBundle(tf, bundle),
        verdictTopic: `fl/test/inspection/site-a/verdict`,
        imagesTopic: `fl/test/inspection/site-a/images/${name}`,
        maxModelBytes: 1 << 30,
        maxQueuedImages: 100,
        log: logger,
        verifyRelease: (seq, version, sha256, sig) => verifyReleaseSignature(pub, seq, version, sha256, sig),
        ...(pinned ? { pinned } : {}),
      });
      await service.start();
      inspections.push({ service, transport, lines });
      return { service, lines };
    };
    const switches = (lines: Record<string, unknown>[]) => lines.filter((l) => /^classifying with model version/.test(String(l.msg)));
    const cmd = (verb: string, body: Record<string, unknown>) => mes.transport.publish(topics.command(verb), encodeJson({ v: 1, by: 'shift-lead', ...body }));
    const result = (requestId: string) => mes.ofType('command-result').find((e) => e.requestId === requestId);
    let released: ReleasedManifest | null = null;
    await mes.transport.subscribe(topics.modelReleased(), (m) => (released = releasedManifestSchema.parse(JSON.parse(m.payload.toString()))));
    const cli = (...args: string[]) =>
      run(process.execPath, [CLI, ...args], { encoding: 'utf8' }).catch(
        (e: { code: number; stdout: string; stderr: string }) => e as unknown as { stdout: string },
      );
    try {
      const follower = await inspect('follower');
      const done = fed.aggregator.aggregator.run();
      await waitFor('version 0 released', () => released !== null, 60_000);
      const v0 = released! as ReleasedManifest;
      assert.deepEqual([v0.version, v0.releaseSeq, v0.by, v0.stage], [0, 1, 'initial', 'released']);
      assert.ok(verifyReleaseSignature(pub, 1, 0, v0.sha256, v0.signature), 'the released manifest is signed');
      assert.ok(!verifyModelSignature(pub, 0, v0.sha256, v0.signature), 'with a release signature, not a candidate signature');
      const pinned = await inspect('pinned', { version: 0, sha256: v0.sha256 });
      await waitFor('both inspect services run v0', () => follower.service.modelVersion === 0 && pinned.service.modelVersion === 0, 60_000);

      // The federation runs; every candidate fails the gate: the lines keep version 0.
      await done;
      await waitFor('both candidates decided', () => mes.ofType('model-rejected').length === 2);
      assert.deepEqual(
        mes.ofType('model-rejected').map((e) => [e.version, (e.failures as { gate: string }[])[0]!.gate]),
        [
          [1, 'minBalancedAccuracy'],
          [2, 'minBalancedAccuracy'],
        ],
        'v1 (evaluated in round 2) and v2 (in the final evaluation round) are rejected',
      );
      assert.equal(mes.ofType('model-released').length, 0);
      assert.equal(follower.service.modelVersion, 0);
      assert.equal((released as ReleasedManifest | null)!.version, 0);
      assert.equal(switches(follower.lines).length, 1);

      // `fedline models` reads the state folder.
      const listed = JSON.parse((await cli('models', '--state', join(dir.path, 'aggregator'), '--json')).stdout) as {
        released: number;
        versions: { version: number; stage: string; signature: string | null; failures: unknown[] }[];
      };
      assert.equal(listed.released, 0);
      assert.deepEqual(
        listed.versions.map((v) => `${v.version}:${v.stage}`),
        ['0:released', '1:rejected', '2:rejected'],
      );
      assert.ok(listed.versions.every((v) => v.signature !== null));
      assert.match((await cli('models', '--state', join(dir.path, 'aggregator'))).stdout, /v2 +2 {2}rejected .*failed: site-a minBalancedAccuracy/);

      const usage = (await cli('release', '--url', broker.url, '--federation', 'test')) as { code?: number; stderr?: string };
      assert.equal(usage.code, 2, 'release without a version: usage error');
      // An operator releases v2 with `fedline release` (MES command over MQTT): inspect switches and logs it.
      const out = await cli('release', '2', '--url', broker.url, '--federation', 'test', '--by', 'qa-lead', '--reason', 'audit passed');
      assert.match(out.stdout, /release: accepted: version 2 released \(its gates failed; released by the operator\); was 0/);
      await waitFor('follower on v2', () => follower.service.modelVersion === 2, 60_000);
      const rel = mes.ofType('model-released')[0]!;
      assert.deepEqual([rel.version, rel.previous, rel.by, rel.reason, rel.releaseSeq], [2, 0, 'qa-lead', 'audit passed', 2]);
      await waitFor('switch logged', () => switches(follower.lines).length === 2);
      const logged = switches(follower.lines)[1]!;
      assert.deepEqual([logged.version, logged.previous, logged.releaseSeq], [2, 0, 2]);
      assert.deepEqual(Object.keys(logged.sites as object).sort(), ['site-a', 'site-b'], 'the switch is logged with the sites metrics');

      // Rollback by MES command (no version: the one released before), bad commands refused.
      await cmd('release', { requestId: 'r-none' });
      await cmd('rollback', { requestId: 'rb-bad', version: 1 });
      await cmd('rollback', { requestId: 'rb1', reason: 'complaints from line 2' });
      await waitFor('answers', () => ['r-none', 'rb-bad', 'rb1'].every((id) => result(id)));
      assert.equal(result('r-none')!.status, 'rejected');
      assert.match(String(result('rb-bad')!.detail), /never released/);
      assert.equal(result('rb1')!.status, 'accepted');
      await waitFor('follower back on v0', () => follower.service.modelVersion === 0, 60_000);
      const rb = mes.ofType('model-rolled-back')[0]!;
      assert.deepEqual([rb.version, rb.from, rb.by, rb.releaseSeq], [0, 2, 'shift-lead', 3]);
      await waitFor('rollback logged', () => switches(follower.lines).length === 3);

      // A replayed older release (genuinely signed) is refused; the pinned service never switched.
      const old = { ...v0 };
      await mes.transport.publish(topics.modelReleased(), encodeJson(old), { retain: false });
      await waitFor('replay refused', () => follower.service.counters.get('FL_MODEL_SIGNATURE') === 1);
      // A forged release (not signed by the aggregator's key) is refused too.
      await mes.transport.publish(topics.modelReleased(), encodeJson({ ...v0, version: 1, releaseSeq: 99, signature: null }), { retain: false });
      await waitFor('forgery refused', () => follower.service.counters.get('FL_MODEL_SIGNATURE') === 2);
      assert.equal(follower.service.modelVersion, 0);
      assert.equal(pinned.service.modelVersion, 0);
      assert.equal(switches(pinned.lines).length, 1);
      assert.ok(pinned.lines.some((l) => /pinned to model version 0; not switching/.test(String(l.msg))));
      const registry = JSON.parse(readFileSync(join(dir.path, 'aggregator', 'registry.json'), 'utf8')) as { versions: Record<string, { stage: string }> };
      assert.deepEqual(
        Object.values(registry.versions).map((v) => v.stage),
        ['released', 'rejected', 'rolled-back'],
      );
      assert.deepEqual(mes.invalid, [], 'every event matches its documented schema');
    } finally {
      for (const i of inspections) {
        await i.service.stop();
        await i.transport.close();
      }
      await fed.stop();
      await mes.close();
      await broker.close();
      dir.cleanup();
    }
  },
);

test('auto release: with no gate failing, each evaluated candidate is released and inspect follows it', { timeout: 240_000 }, async () => {
  const dir = tempDir('release-auto');
  const broker = await startAedes();
  const mes = await mesObserver(broker.url);
  const fed = await startFederation({
    url: broker.url,
    dir: dir.path,
    agents: ['site-a'],
    rounds: 1,
    aggregator: { release: { ...defaults, maxRegression: null } },
  });
  const { tf } = await loadTf('cpu');
  const transport = await MqttTransport.connect({ url: broker.url, clientId: 'inspect', logger: silentLogger() });
  const service = new InspectionService({
    agentId: 'site-a',
    station: 'cam',
    transport,
    topics,
    cache: new ModelCache(join(dir.path, 'inspect'), silentLogger()),
    classifierFor: (bundle) => TfjsClassifier.fromBundle(tf, bundle),
    verdictTopic: 'fl/test/inspection/site-a/verdict',
    imagesTopic: 'fl/test/inspection/site-a/images',
    maxModelBytes: 1 << 30,
    maxQueuedImages: 100,
    log: silentLogger(),
  });
  try {
    await service.start();
    await fed.aggregator.aggregator.run();
    // v1 is evaluated in the final evaluation round, validated and released by the policy.
    await waitFor('released event', () => mes.ofType('model-released').length === 1);
    const v = mes.ofType('model-validated')[0]!;
    assert.deepEqual([v.version, v.mode, v.against], [1, 'auto', 0]);
    const r = mes.ofType('model-released')[0]!;
    assert.deepEqual([r.version, r.previous, r.by], [1, 0, 'policy']);
    await waitFor('inspect on v1', () => service.modelVersion === 1, 60_000);
    assert.deepEqual(mes.invalid, []);
  } finally {
    await service.stop();
    await transport.close();
    await fed.stop();
    await mes.close();
    await broker.close();
    dir.cleanup();
  }
});

test('approve mode: a validated candidate waits for the operator; the release survives an aggregator restart', { timeout: 240_000 }, async () => {
  const dir = tempDir('release-approve');
  const broker = await startAedes();
  const mes = await mesObserver(broker.url);
  const o = {
    url: broker.url,
    dir: dir.path,
    agents: ['site-a'],
    rounds: 1,
    aggregator: { release: { ...defaults, mode: 'approve' as const, maxRegression: null } },
  };
  let fed = await startFederation(o);
  const releasedOn = async () => {
    const t = await MqttTransport.connect({ url: broker.url, clientId: `probe-${Math.random()}`, logger: silentLogger() });
    let got: ReleasedManifest | null = null;
    await t.subscribe(topics.modelReleased(), (m) => (got = releasedManifestSchema.parse(JSON.parse(m.payload.toString()))));
    await waitFor('retained released manifest', () => got !== null);
    await t.close();
    return got! as ReleasedManifest;
  };
  try {
    await fed.aggregator.aggregator.run();
    await waitFor('v1 validated', () => mes.ofType('model-validated').length === 1);
    assert.deepEqual([mes.ofType('model-validated')[0]!.version, mes.ofType('model-validated')[0]!.mode], [1, 'approve']);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(mes.ofType('model-released').length, 0, 'approve: no release without the operator');
    assert.equal((await releasedOn()).version, 0);
    await mes.transport.publish(topics.command('release'), encodeJson({ v: 1, requestId: 'ok1', by: 'qa', version: 1 }));
    await waitFor('released', () => mes.ofType('model-released').length === 1);
    assert.deepEqual([(await releasedOn()).version, (await releasedOn()).releaseSeq], [1, 2]);
    // Restart: the registry keeps the release; the retained manifest is published again as it was.
    await fed.stop();
    fed = await startFederation(o);
    await fed.aggregator.aggregator.run();
    const after = await releasedOn();
    assert.deepEqual([after.version, after.releaseSeq, after.by], [1, 2, 'qa']);
    assert.deepEqual(mes.invalid, []);
  } finally {
    await fed.stop();
    await mes.close();
    await broker.close();
    dir.cleanup();
  }
});
