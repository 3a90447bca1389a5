import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { FsModelStore } from '../aggregator/model-store.js';
import { readRegistry } from '../aggregator/model-registry.js';
import { checkGates } from '../aggregator/release-policy.js';
import { aggregatorConfigSchema, mqttConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { describeError } from '../shared/protocol/errors.js';
import { createTopics, defaultRoot } from '../shared/protocol/topics.js';
import { encodeJson } from '../shared/protocol/wire-codec.js';
import { connectMqtt } from '../shared/transport/mqtt-connect.js';
import { silentLogger } from '../shared/util/logger.js';
import { MODELS_USAGE, RELEASE_USAGE, ROLLBACK_USAGE } from './usage.js';

/**
 * `fedline models --state DIR`: every stored version with its stage, the sites' metrics and its
 * signature, read from the aggregator's state folder (read only; safe while it runs).
 * `fedline release VERSION` / `fedline rollback [VERSION]`: send the MES command to the running
 * aggregator over MQTT with an `mes` login and wait for its command-result (exit 0 accepted,
 * 1 rejected or no answer, 2 usage).
 */
export async function runModels(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { state: { type: 'string' }, json: { type: 'boolean', default: false } }, strict: true });
  if (!values.state) {
    process.stderr.write(`fedline models: --state DIR is required\n\n${MODELS_USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const store = new FsModelStore(join(values.state, 'models'));
  const registry = await readRegistry(values.state);
  const policy = parseConfig(aggregatorConfigSchema.shape.release, {}, 'release defaults');
  const rows = [];
  for (const version of await store.versions()) {
    const meta = await store.get(version);
    if (!meta) continue;
    const entry = registry?.versions[version];
    const sites = entry?.gates?.sites ?? checkGates(policy, meta.classes, meta.metrics, null).sites;
    rows.push({
      version,
      round: meta.round,
      stage: entry?.stage ?? 'candidate',
      released: registry?.released === version,
      sha256: meta.sha256,
      signature: entry?.signature ?? null,
      sites,
      failures: entry?.gates?.failures ?? [],
    });
  }
  if (values.json) {
    process.stdout.write(JSON.stringify({ released: registry?.released ?? null, releaseSeq: registry?.releaseSeq ?? 0, versions: rows }, null, 2) + '\n');
    return;
  }
  process.stdout.write('version  round  stage        sha256        signed  balanced accuracy per site (defect recall)\n');
  for (const r of rows) {
    const sites = Object.entries(r.sites)
      .map(([a, m]) => `${a} ${m.balancedAccuracy.toFixed(3)}${m.defectRecall !== null ? ` (${m.defectRecall.toFixed(2)})` : ''}`)
      .join(', ');
    const failed = r.failures.length ? `  failed: ${r.failures.map((f) => `${f.agent ?? '-'} ${f.gate}`).join(', ')}` : '';
    process.stdout.write(
      `${`v${r.version}`.padEnd(8)} ${String(r.round).padStart(5)}  ${r.stage.padEnd(11)}  ${r.sha256.slice(0, 12)}  ${r.signature ? 'yes' : 'no '}     ${sites || '-'}${failed}\n`,
    );
  }
}

const connectionOptions = {
  url: { type: 'string' },
  federation: { type: 'string' },
  'topic-root': { type: 'string' },
  username: { type: 'string' },
  'password-file': { type: 'string' },
  'ca-file': { type: 'string' },
  by: { type: 'string' },
  reason: { type: 'string' },
  'timeout-ms': { type: 'string' },
} as const;

export async function runModelCommand(verb: 'release' | 'rollback', args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: connectionOptions, allowPositionals: true, strict: true });
  const version = positionals[0] !== undefined ? Number(positionals[0]) : undefined;
  const badVersion = version !== undefined && !(Number.isInteger(version) && version >= 0);
  if (!values.url || !values.federation || positionals.length > 1 || badVersion || (verb === 'release' && version === undefined)) {
    process.stderr.write(
      `fedline ${verb}: ${verb === 'release' ? 'VERSION, ' : ''}--url and --federation are required\n\n${verb === 'release' ? RELEASE_USAGE : ROLLBACK_USAGE}\n`,
    );
    process.exitCode = 2;
    return;
  }
  try {
    const mqtt = parseConfig(
      mqttConfigSchema,
      {
        url: values.url,
        ...(values.username ? { username: values.username } : {}),
        ...(values['password-file'] ? { passwordFile: values['password-file'] } : {}),
        ...(values['ca-file'] ? { caFile: values['ca-file'] } : {}),
      },
      'command line',
    );
    const topics = createTopics(values['topic-root'] ?? defaultRoot(values.federation));
    const requestId = `cli-${randomBytes(6).toString('hex')}`;
    const timeoutMs = Number(values['timeout-ms'] ?? 30_000);
    const transport = await connectMqtt(mqtt, `fedline-cli-${requestId}`, silentLogger());
    try {
      let settle: (e: { status: string; detail: string }) => void = () => undefined;
      const answer = new Promise<{ status: string; detail: string }>((resolve, reject) => {
        settle = resolve;
        setTimeout(() => reject(new Error(`no answer from the aggregator within ${timeoutMs} ms (is it running?)`)), timeoutMs).unref();
      });
      await transport.subscribe(topics.event('command-result'), (m) => {
        const e = JSON.parse(m.payload.toString('utf8')) as { requestId?: string; status: string; detail: string };
        if (e.requestId === requestId) settle(e);
      });
      const body = {
        v: 1,
        requestId,
        by: values.by ?? 'fedline-cli',
        ...(values.reason ? { reason: values.reason } : {}),
        ...(version !== undefined ? { version } : {}),
      };
      await transport.publish(topics.command(verb), encodeJson(body), { qos: 1 });
      const result = await answer;
      process.stdout.write(`${verb}: ${result.status}: ${result.detail}\n`);
      process.exitCode = result.status === 'accepted' ? 0 : 1;
    } finally {
      await transport.close();
    }
  } catch (err) {
    process.stderr.write(`fedline ${verb}: ${describeError(err).message}\n`);
    process.exitCode = 1;
  }
}
