import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { startBroker } from '../broker/main.js';
import { startInspection } from '../edge-agent/inspect-main.js';
import { inspectConfigSchema } from '../shared/config/inspect-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { silentLogger } from '../shared/util/logger.js';
import { listImageFiles } from '../training/image-folder.js';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import { REPO_ROOT, startFederation, tempDir, waitFor } from './helpers.js';

type Samples = Map<string, number>;

/** `name{labels} value` lines of the Prometheus text format, keyed by `name{labels}`. */
function parse(text: string): Samples {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    const help = /^# HELP (\S+)/.exec(line);
    if (help) m.set(`# ${help[1]}`, 0); // the metric exists, even before it has a sample
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(
      line
        .slice(0, i)
        .replace(/,?service="[^"]*"/, '')
        .replace('{}', ''),
      Number(line.slice(i + 1)),
    );
  }
  return m;
}

/** Sum of every series of `name` whose labels contain `labels`. */
function sum(s: Samples, name: string, labels = ''): number {
  let total = 0;
  for (const [k, v] of s) if ((k === name || k.startsWith(`${name}{`)) && k.includes(labels)) total += v;
  return total;
}

async function scrape(url: string): Promise<Samples> {
  const r = await fetch(`${url}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /text\/plain/);
  return parse(await r.text());
}

async function healthy(url: string): Promise<Record<string, unknown>> {
  const r = await fetch(`${url}/healthz`);
  assert.equal(r.status, 200);
  return (await r.json()) as Record<string, unknown>;
}

/** Every metric name docs/metrics.md documents, per service. */
function documented(): Set<string> {
  const doc = readFileSync(join(REPO_ROOT, 'docs', 'metrics.md'), 'utf8');
  return new Set([...doc.matchAll(/`(fedline_[a-z_]+)`/g)].map((m) => m[1]!));
}

test(
  '/metrics and /healthz on broker, aggregator, agents and inspect: off by default, loopback, every name documented, values follow a real federation',
  { timeout: 300_000 },
  async () => {
    const dir = tempDir('prometheus');
    const log = silentLogger();
    const off = parseConfig(brokerConfigSchema, { port: 0, allowAnonymous: true }, 'broker');
    assert.equal(off.metrics, undefined, 'off unless configured');
    const brokerConfig = parseConfig(brokerConfigSchema, { host: '127.0.0.1', port: 0, allowAnonymous: true, metrics: { port: 0 } }, 'broker');
    assert.equal(brokerConfig.metrics?.host, '127.0.0.1', 'loopback by default');
    const broker = await startBroker(brokerConfig, log);
    let fed: Awaited<ReturnType<typeof startFederation>> | null = null;
    let inspect: Awaited<ReturnType<typeof startInspection>> | null = null;
    try {
      fed = await startFederation({
        url: broker.url,
        dir: dir.path,
        agents: ['s1', 's2'],
        rounds: 2,
        // Every validated candidate is released (no gate at all): inspect, which runs the released
        // version only, then follows each new model and its version gauge can be checked.
        aggregator: {
          metrics: { port: 0, host: '127.0.0.1' },
          release: { mode: 'auto', minBalancedAccuracy: null, minDefectRecall: null, maxRegression: null, defectClasses: ['NOT_OKAY'], minSites: 1 },
        },
        agent: { metrics: { port: 0, host: '127.0.0.1' } },
      });
      mkdirSync(join(dir.path, 'incoming'));
      inspect = await startInspection(
        parseConfig(
          inspectConfigSchema,
          {
            agentId: 's1',
            federation: 'test',
            mqtt: { url: broker.url },
            stateDir: join(dir.path, 'inspect'),
            watch: { dir: join(dir.path, 'incoming'), settleMs: 50 },
            backend: 'cpu',
            metrics: { port: 0 },
          },
          'inspect',
        ),
        log,
      );
      const urls = {
        broker: broker.metrics!.url,
        aggregator: fed.aggregator.metrics!.url,
        agent: fed.agents[0]!.metrics!.url,
        inspect: inspect.metrics!.url,
      };
      for (const url of Object.values(urls)) assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.equal((await fetch(`${urls.broker}/nope`)).status, 404);

      const before = {
        broker: await scrape(urls.broker),
        aggregator: await scrape(urls.aggregator),
        agent: await scrape(urls.agent),
        inspect: await scrape(urls.inspect),
      };
      // Every fedline_ metric each service exposes is documented, and the documented ones are exposed.
      const docNames = documented();
      const exposed = new Set<string>();
      for (const s of Object.values(before)) for (const k of s.keys()) if (k.startsWith('# fedline_')) exposed.add(k.slice(2));
      for (const name of exposed) assert.ok(docNames.has(name), `${name} is in docs/metrics.md`);
      for (const name of docNames) assert.ok(exposed.has(name), `docs/metrics.md's ${name} is exposed`);
      assert.equal(sum(before.agent, 'fedline_agent_state'), 1, 'one state at a time');
      assert.equal(before.inspect.get('fedline_inspect_model_version'), -1);
      assert.ok((before.broker.get('fedline_broker_clients') ?? 0) >= 4, 'aggregator, 2 agents and inspect connected');
      for (const url of Object.values(urls)) assert.equal((await healthy(url)).status, 'ok');

      const result = await fed.aggregator.aggregator.run();
      assert.equal(result.finalVersion, 2);
      const src = (await listImageFiles(join(dir.path, 'data', 's1'), INSPECTION_CLASSES)).files[0]!.path;
      await waitFor('inspect on the newest model (released)', async () => (await scrape(urls.inspect)).get('fedline_inspect_model_version') === 2, 60_000, 200);
      copyFileSync(src, join(dir.path, 'incoming', '.part.tmp'));
      renameSync(join(dir.path, 'incoming', '.part.tmp'), join(dir.path, 'incoming', 'part.png'));
      await waitFor('a verdict counted', async () => sum(await scrape(urls.inspect), 'fedline_inspect_verdicts_total') === 1, 60_000, 200);

      const after = {
        broker: await scrape(urls.broker),
        aggregator: await scrape(urls.aggregator),
        agent: await scrape(urls.agent),
        inspect: await scrape(urls.inspect),
      };
      assert.ok(sum(after.aggregator, 'fedline_aggregator_rounds_total', 'kind="train"') >= 2, 'two training rounds');
      assert.equal(after.aggregator.get('fedline_aggregator_updates_accepted_total'), 4, '2 agents x 2 rounds');
      assert.equal(after.aggregator.get('fedline_aggregator_model_version'), 2);
      assert.ok(sum(after.aggregator, 'fedline_aggregator_round_duration_seconds_count') >= 2);
      assert.ok((after.aggregator.get('fedline_aggregator_update_bytes_total') ?? 0) > 0);
      assert.ok(sum(after.aggregator, 'fedline_aggregator_update_chunks_total', 'kind="new"') > 0);
      assert.ok(sum(after.agent, 'fedline_agent_rounds_total', 'outcome="accepted"') >= 2);
      assert.ok((after.agent.get('fedline_agent_update_bytes_total') ?? 0) > 0);
      assert.ok((after.agent.get('fedline_agent_model_bytes_total') ?? 0) > 0);
      assert.ok(sum(after.agent, 'fedline_agent_state_changes_total', 'state="training"') >= 2);
      assert.equal(sum(after.agent, 'fedline_agent_state'), 1);
      assert.ok(sum(after.broker, 'fedline_broker_messages_total') > sum(before.broker, 'fedline_broker_messages_total'));
      assert.ok(sum(after.broker, 'fedline_broker_message_bytes_total') > sum(before.broker, 'fedline_broker_message_bytes_total'));
      // Exposed and quiet after the rounds: nothing stalled, no delivery waiting.
      assert.equal(after.broker.get('fedline_broker_stalled_closed_total'), 0);
      assert.equal(after.broker.get('fedline_broker_deliveries_queued'), 0);
      assert.ok((after.broker.get('fedline_broker_deliveries_in_progress') ?? -1) >= 0);
      assert.equal(sum(after.inspect, 'fedline_inspect_verdict_latency_seconds_count'), 1);
      assert.ok((after.aggregator.get('process_resident_memory_bytes') ?? 0) > 0, "prom-client's default process metrics");
    } finally {
      await inspect?.close();
      await fed?.stop();
      await broker.close();
      dir.cleanup();
    }
  },
);
