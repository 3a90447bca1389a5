import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Journal } from '../aggregator/aggregator.js';
import { readRegistry } from '../aggregator/model-registry.js';
import { PAPER_CLIENTS } from '../synthetic-data/generate.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { silentLogger } from '../shared/util/logger.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { createTopics, defaultRoot } from '../shared/protocol/topics.js';
import type { DemoDirs, DemoOptions, Say } from './demo-options.js';
import { prepareData, prepareFolders } from './prepare-data.js';
import { ProcessGroup, type Child } from './process-group.js';
import { followProgress, type WindowTally } from './progress.js';
import { DEMO_FEDERATION, startDemoBroker, startDemoDashboard, startDemoFederation, startDemoPlc } from './services.js';
import { buildSummary, renderFinalModels, renderTable, renderWindowTable } from './summary.js';

export type { DemoOptions } from './demo-options.js';
// bench/encodings.ts and the tests import these from here.
export { buildSummary, renderTable, type DemoSummary } from './summary.js';

/**
 * `npm run demo`: a whole federation on this machine, each part its own process, talking MQTT
 * over loopback. Returns the exit code (0 when the federation completed).
 */
export async function runDemo(options: DemoOptions): Promise<number> {
  const t0 = Date.now();
  const elapsed = () => `[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s]`;
  const say: Say = (line) => process.stdout.write(`${elapsed()} ${line}\n`);
  const dirs = await prepareFolders(options.out);
  options.initFrom = await prepareData(options, dirs, say);

  const group = new ProcessGroup();
  stopGroupOnSignal(group, say);
  let observer: MqttTransport | null = null;
  try {
    const agents = PAPER_CLIENTS.map((c) => c.name);
    const topics = createTopics(defaultRoot(DEMO_FEDERATION));
    const { url, creds } = await startDemoBroker(group, dirs, topics, agents, say);
    // The observer sees what an MES would see.
    observer = await MqttTransport.connect({
      url,
      clientId: 'fedline-demo-observer',
      logger: silentLogger(),
      username: 'observer',
      password: creds.password('observer'),
    });
    const windows = await followProgress(observer, topics, agents, options.trigger, say);
    const dashboard = options.dashboard ? await startDemoDashboard(group, dirs, url, creds, say) : null;
    const plcEndpoint = options.trigger === 'opcua' ? await startDemoPlc(group, dirs, options.plcSchedule, agents, say) : null;
    const aggregator = await startDemoFederation(group, { options, dirs, agents, url, creds, plcEndpoint }, say);
    await summarise(aggregator, { options, dirs, agents, windows, durationMs: () => Date.now() - t0 });
    if (dashboard) {
      say(`federation complete; the dashboard stays up on ${dashboard} until Ctrl-C`);
      await new Promise<never>(() => undefined); // Ctrl-C (stopGroupOnSignal) ends the demo
    }
    return 0;
  } catch (err) {
    say(`demo failed: ${(err as Error).message}`);
    return 1;
  } finally {
    await observer?.close().catch(() => undefined);
    await group.stopAll();
  }
}

/** Ctrl-C (or SIGTERM) stops every process of the group, a second one kills them at once. */
function stopGroupOnSignal(group: ProcessGroup, say: Say): void {
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) {
      group.killAllNow();
      process.exit(130);
    }
    interrupted = true;
    say('interrupted: stopping every process');
    group.stopAll(3000).finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => group.killAllNow());
}

/** The federation runs until the aggregator exits; then the summary (summary.json and the per-round tables). */
async function summarise(
  aggregator: Child,
  run: { options: DemoOptions; dirs: DemoDirs; agents: readonly string[]; windows: WindowTally; durationMs: () => number },
): Promise<void> {
  const { options, dirs, agents, windows } = run;
  const { out } = options;
  const code = await aggregator.exited;
  if (code !== 0)
    throw new FedlineError(ErrorCodes.ABORTED, `the aggregator exited with code ${code}; see ${aggregator.logFile}`, { code, logFile: aggregator.logFile });
  const journal = JSON.parse(await readFile(join(dirs.state, 'aggregator', 'journal.json'), 'utf8')) as Journal;
  const registry = await readRegistry(join(dirs.state, 'aggregator'));
  const summary = buildSummary(journal, options, join(dirs.state, 'aggregator', 'models'), run.durationMs(), registry?.released ?? null);
  if (options.trigger === 'opcua') for (const r of summary.rounds) r.windows = windows.of(r.round, agents);
  await writeFile(join(out, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
  process.stdout.write('\n' + renderTable(summary) + '\n');
  if (options.trigger === 'opcua') process.stdout.write('\n' + renderWindowTable(summary) + '\n');
  process.stdout.write(`\n${renderFinalModels(summary)}\nsummary: ${join(out, 'summary.json')}   logs: ${dirs.logs}\n`);
  process.stdout.write(`total time ${(summary.durationMs / 1000).toFixed(1)} s\n`);
}
