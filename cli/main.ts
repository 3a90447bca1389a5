#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { agentConfigSchema, aggregatorConfigSchema } from '../shared/config/service-config.js';
import { loadConfigFile } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { inspectConfigSchema } from '../shared/config/inspect-config.js';
import { plantConfigSchema } from '../shared/config/plant-config.js';
import { createLogger } from '../shared/util/logger.js';
import { fatal, notifyReady, onShutdown } from './lifecycle.js';
import { intOption, invalidOption, isUsageError } from './option-checks.js';
import { COMMAND_USAGE, ExitCodes, MAIN_USAGE, optionsIn } from './usage.js';
import { readFileSync } from 'node:fs';

const HELP = new Set(['--help', '-h']);

/** The package's version (package.json next to dist/). */
export function fedlineVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

/** A command-line mistake: the message, the valid options and the command's usage on stderr; exit code 2. */
function usageFailure(command: string, err: unknown): void {
  const usage = COMMAND_USAGE[command] ?? MAIN_USAGE;
  const valid = optionsIn(usage);
  const message = (err as Error).message.replace(/\. To specify a positional argument starting with a '-'.*$/s, '');
  process.stderr.write(`fedline ${command}: ${message}\n${valid.length ? `valid options: ${valid.join(' ')}\n` : ''}\n${usage}\n`);
  process.exitCode = ExitCodes.USAGE;
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === '--version' || command === '-V' || command === 'version') {
    process.stdout.write(`fedline ${fedlineVersion()}\n`);
    return;
  }
  // `fedline <command> --help` (or -h), before anything else: the usage comes from cli/usage.ts, loading nothing heavy.
  const usage = command === undefined ? undefined : COMMAND_USAGE[command];
  if (usage !== undefined && rest.some((a) => HELP.has(a))) {
    process.stdout.write(usage + '\n');
    return;
  }
  try {
    await dispatch(command, rest);
  } catch (err) {
    if (command !== undefined && isUsageError(err)) return usageFailure(command, err);
    throw err;
  }
}

async function dispatch(command: string | undefined, rest: string[]): Promise<void> {
  switch (command) {
    case 'broker':
      return runBroker(rest);
    case 'aggregator':
      return runAggregator(rest);
    case 'agent':
      return runAgent(rest);
    case 'plant':
      return runPlant(rest);
    case 'demo': {
      const { runDemoCommand } = await import('./demo-cmd.js');
      process.exitCode = await runDemoCommand(rest);
      return;
    }
    case 'keygen': {
      const { runKeygen } = await import('./keygen-cmd.js');
      return runKeygen(rest);
    }
    case 'inspect':
      return runInspect(rest);
    case 'dashboard': {
      const { runDashboard } = await import('./dashboard-cmd.js');
      return runDashboard(rest);
    }
    case 'models': {
      const { runModels } = await import('./model-release-cmd.js');
      return runModels(rest);
    }
    case 'release':
    case 'rollback': {
      const { runModelCommand } = await import('./model-release-cmd.js');
      return runModelCommand(command, rest);
    }
    case 'plc-sim': {
      const { runPlcSim } = await import('./plc-sim-cmd.js');
      return runPlcSim(rest);
    }
    case 'passwd': {
      const { runPasswd } = await import('./security-cmd.js');
      return runPasswd(rest);
    }
    case 'acl': {
      const { runAcl } = await import('./security-cmd.js');
      return runAcl(rest);
    }
    case 'dataset': {
      const { runDataset } = await import('./synth-data-cmd.js');
      return runDataset(rest);
    }
    case 'classify': {
      const { runClassify } = await import('./classify.js');
      return runClassify(rest);
    }
    case 'pretrain': {
      const { runPretrain } = await import('./pretrain-cmd.js');
      return runPretrain(rest);
    }
    case 'experiment': {
      const { runExperimentCommand } = await import('./experiment.js');
      return runExperimentCommand(rest);
    }
    case 'model-info': {
      const { runModelInfo } = await import('./model-info.js');
      return runModelInfo(rest);
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(MAIN_USAGE + '\n');
      return;
    default:
      process.stderr.write(`fedline: unknown command "${command}"\n\n${MAIN_USAGE}\n`);
      process.exitCode = ExitCodes.USAGE;
  }
}

function configArg(args: string[], extra: Record<string, { type: 'string' }> = {}): { config: string; values: Record<string, string | undefined> } {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, ...extra }, strict: true });
  if (!values.config) throw invalidOption('--config FILE is required (examples/ has one for each service)');
  return { config: values.config, values: values as Record<string, string | undefined> };
}

async function runBroker(args: string[]): Promise<void> {
  const { config: file, values } = configArg(args, { port: { type: 'string' } });
  const port = values.port !== undefined ? intOption('port', values.port, 0, 65535) : undefined;
  let log = createLogger({ name: 'broker' });
  try {
    const loaded = loadConfigFile(brokerConfigSchema, file);
    const config = port !== undefined ? { ...loaded, port } : loaded;
    log = createLogger({ name: 'broker', ...(config.logLevel ? { level: config.logLevel } : {}) });
    // Each service's modules load only when its command runs: `fedline aggregator` never loads training/.
    const { startBroker } = await import('../broker/main.js');
    const broker = await startBroker(config, log);
    onShutdown(log, () => broker.close());
    notifyReady({ url: broker.url, port: broker.port, host: broker.host, tlsUrl: broker.tlsUrl, metricsUrl: broker.metrics?.url ?? null });
  } catch (err) {
    fatal(log, err);
  }
}

async function runAggregator(args: string[]): Promise<void> {
  const { config: file } = configArg(args);
  let log = createLogger({ name: 'aggregator' });
  try {
    const config = loadConfigFile(aggregatorConfigSchema, file);
    log = createLogger({ name: 'aggregator', ...(config.logLevel ? { level: config.logLevel } : {}) });
    const { startAggregator } = await import('../aggregator/main.js');
    const running = await startAggregator(config, log);
    onShutdown(log, () => running.close());
    notifyReady({ federation: config.federation, metricsUrl: running.metrics?.url ?? null });
    const result = await running.aggregator.run();
    log.info({ finalVersion: result.finalVersion, reason: result.reason, modelDir: running.store.dir(result.finalVersion) }, 'federation finished');
    if (config.exitWhenComplete) {
      await running.transport.close();
      process.exit(0);
    }
  } catch (err) {
    fatal(log, err);
  }
}

async function runAgent(args: string[]): Promise<void> {
  const { config: file } = configArg(args);
  let log = createLogger({ name: 'agent' });
  try {
    const config = loadConfigFile(agentConfigSchema, file);
    log = createLogger({ name: 'agent', ...(config.logLevel ? { level: config.logLevel } : {}) });
    const { startAgent } = await import('../edge-agent/main.js');
    const running = await startAgent(config, log);
    onShutdown(log, () => running.close());
    notifyReady({ agent: config.agentId, metricsUrl: running.metrics?.url ?? null });
  } catch (err) {
    fatal(log, err);
  }
}

async function runPlant(args: string[]): Promise<void> {
  const { config: file } = configArg(args);
  let log = createLogger({ name: 'plant' });
  try {
    const config = loadConfigFile(plantConfigSchema, file);
    log = createLogger({ name: 'plant', ...(config.logLevel ? { level: config.logLevel } : {}) });
    const { startPlant } = await import('../plant/main.js');
    const running = await startPlant(config, log);
    onShutdown(log, () => running.close());
    notifyReady({ plant: config.upstream.agentId, metricsUrl: running.downstream.metrics?.url ?? null });
  } catch (err) {
    fatal(log, err);
  }
}

async function runInspect(args: string[]): Promise<void> {
  const { config: file } = configArg(args);
  let log = createLogger({ name: 'inspect' });
  try {
    const config = loadConfigFile(inspectConfigSchema, file);
    log = createLogger({ name: 'inspect', ...(config.logLevel ? { level: config.logLevel } : {}) });
    const { startInspection } = await import('../edge-agent/inspect-main.js');
    const running = await startInspection(config, log);
    onShutdown(log, () => running.close());
    notifyReady({ agent: config.agentId, verdictTopic: running.verdictTopic, metricsUrl: running.metrics?.url ?? null });
  } catch (err) {
    fatal(log, err);
  }
}

main(process.argv.slice(2)).catch((err: Error) => {
  process.stderr.write(`fedline: ${err.message}\n`);
  process.exit(ExitCodes.FAILURE);
});
