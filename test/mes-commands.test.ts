import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startAggregator } from '../aggregator/main.js';
import { FederationControl } from '../aggregator/federation-control.js';
import { startAgent } from '../edge-agent/main.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';
import { createTopics } from '../shared/protocol/topics.js';
import { agentConfig, aggregatorConfig, startAedes, tempDir, tinyDataset, waitFor, type FederationOptions } from './helpers.js';
import { mesObserver } from './mes-observer.js';

const topics = createTopics('fl/test');

test('federation control: start / pause / resume / stop are idempotent and refused where they make no sense', () => {
  const c = new FederationControl('stopped');
  assert.equal(c.apply('pause').status, 'rejected');
  assert.equal(c.apply('resume').status, 'rejected');
  assert.deepEqual(c.apply('start'), { status: 'accepted', detail: 'rounds start again', from: 'stopped', to: 'running' });
  assert.equal(c.apply('start').detail, 'already running');
  assert.equal(c.apply('pause').to, 'paused');
  assert.equal(c.apply('pause').detail, 'already paused');
  assert.match(c.apply('start').detail, /paused: send resume/);
  assert.equal(c.apply('resume').to, 'running');
  assert.equal(c.apply('stop').to, 'stopped');
  assert.equal(c.apply('model-manifest').status, 'accepted');
  c.complete();
  for (const verb of ['start', 'pause', 'resume', 'stop'] as const) assert.equal(c.apply(verb).status, 'rejected');
  assert.equal(c.apply('model-manifest').status, 'accepted');
});

test(
  'MES commands on a real broker: start, manifest request, pause/resume of training, stop closes the round, bad commands refused',
  { timeout: 120_000 },
  async () => {
    const dir = tempDir('mes-commands');
    const broker = await startAedes();
    const mes = await mesObserver(broker.url);
    const o: FederationOptions = {
      url: broker.url,
      dir: dir.path,
      agents: ['site-a'],
      rounds: 3,
      aggregator: {
        autoStart: false,
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
    const agent = await startAgent(agentConfig(o, 'site-a'), silentLogger());
    const cmd = (verb: string, body: Record<string, unknown> = {}) =>
      mes.transport.publish(topics.command(verb), encodeJson({ v: 1, by: 'mes-test', ...body }));
    const results = (requestId: string) => mes.ofType('command-result').filter((e) => e.requestId === requestId);
    try {
      const run = aggregator.aggregator.run();
      // autoStart false: the agent is online, the initial model is published, but no round starts.
      await waitFor('agent idle', () => mes.last('site-a')?.state === 'idle');
      await waitFor('initial model published', () => mes.ofType('model-published').length === 1, 30_000);
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(mes.ofType('round-started').length, 0);

      // The manifest of the current model, on request.
      await cmd('model-manifest', { requestId: 'm1' });
      await waitFor('manifest answer', () => mes.ofType('model-manifest').length === 1);
      const manifest = mes.ofType('model-manifest')[0]!;
      assert.equal(manifest.requestId, 'm1');
      assert.equal((manifest.manifest as { version: number }).version, 0);

      // Bad commands: refused, counted, answered.
      await cmd('reboot', { requestId: 'x1' });
      await mes.transport.publish(topics.command('start'), Buffer.from('{"v":1,'));
      await mes.transport.publish(topics.command('pause'), encodeJson({ v: 1, agents: ['not/an/id'] }));
      await waitFor('three rejections', () => mes.ofType('command-result').filter((e) => e.status === 'rejected').length === 3);
      assert.match(String(results('x1')[0]!.detail), /unknown command "reboot"/);
      const counters = aggregator.aggregator.counters.toJSON();
      assert.equal(counters[ErrorCodes.COMMAND], 1);
      assert.equal(counters[ErrorCodes.MSG_DECODE], 1);
      assert.equal(counters[ErrorCodes.MSG_SCHEMA], 1);
      assert.equal(mes.ofType('round-started').length, 0, 'a malformed start starts nothing');

      // start: round 1.
      await cmd('start', { requestId: 's1' });
      await waitFor('round 1', () => mes.ofType('round-started').length === 1);
      assert.deepEqual(
        results('s1').map((e) => [e.status, e.federationState, e.by]),
        [['accepted', 'running', 'aggregator']],
      );

      // pause while site-a trains: it stops at a batch boundary (and says so); the aggregator holds the next round.
      await waitFor('training', () => mes.last('site-a')?.state === 'training' && (mes.last('site-a')!.progress ?? 0) > 0, 30_000);
      await cmd('pause', { requestId: 'p1', reason: 'quality audit' });
      await waitFor('paused', () => mes.last('site-a')?.state === 'paused', 10_000);
      await waitFor('both answered', () => results('p1').length === 2);
      assert.deepEqual(
        results('p1')
          .map((e) => `${e.by}:${e.status}:${e.federationState}`)
          .sort(),
        ['aggregator:accepted:paused', 'site-a:accepted:null'],
      );
      assert.match(mes.last('site-a')!.detail!, /manual: paused by command by mes-test \(quality audit\)/);
      await cmd('resume', { requestId: 'r1' });
      await waitFor('round 1 completed', () => mes.ofType('round-completed').length === 1, 30_000);
      assert.equal(mes.ofType('round-completed')[0]!.outcome, 'aggregate');

      // stop during round 2: closed without aggregation, the agent drops its work, round 3 waits for start.
      await waitFor('round 2 training', () => mes.last('site-a')?.state === 'training' && mes.last('site-a')?.round === 2, 30_000);
      await cmd('stop', { requestId: 'st1', reason: 'line changeover' });
      await waitFor('round 2 completed', () => mes.ofType('round-completed').length === 2, 10_000);
      const r2 = mes.ofType('round-completed')[1]!;
      assert.equal(r2.outcome, 'keep');
      assert.match(String(r2.reason), /stopped by MES command from mes-test \(line changeover\)/);
      await waitFor('agent idle again', () => mes.last('site-a')?.state === 'idle' && mes.last('site-a')?.round === 2);
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(mes.ofType('round-started').length, 2, 'stopped: no round 3 yet');
      await cmd('start', { requestId: 's2' });
      const result = await run;
      assert.deepEqual(
        result.rounds.map((r) => r.outcome),
        ['aggregate', 'keep', 'aggregate'],
      );

      // Complete: commands that would change it are refused; the manifest is still served.
      await cmd('start', { requestId: 's3' });
      await cmd('model-manifest', { requestId: 'm2' });
      await waitFor('answers', () => results('s3').length === 1 && mes.ofType('model-manifest').length === 2);
      assert.equal(results('s3')[0]!.status, 'rejected');
      assert.equal((mes.ofType('model-manifest')[1]!.manifest as { version: number }).version, 2);
      assert.deepEqual(mes.invalid, [], 'every event matches its documented schema');
    } finally {
      await agent.close();
      await aggregator.close();
      await mes.close();
      await broker.close();
      dir.cleanup();
    }
  },
);
