#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { agentConfigSchema, aggregatorConfigSchema, brokerConfigSchema, loadConfigFile } from '../shared/config/service-config.js';
import { inspectConfigSchema } from '../shared/config/inspect-config.js';
import { createLogger } from '../shared/util/logger.js';
import { fatal, notifyReady, onShutdown } from './lifecycle.js';

const USAGE = `fedline: federated learning for factory quality inspection over MQTT

usage: fedline <command> [options]

commands:
  demo        run a whole federation on this machine: embedded broker, aggregator and 3 agents
              as separate processes on generated images
                --rounds N (12)  --out DIR (./demo-out)  --seed N (42)  --epochs N (2)  --size PX (32)
                --model small-cnn|vgg11|vgg16|vgg19 (small-cnn)  --federate all|head (all)  --width X
                --init-from DIR  --pretrain-epochs N (VGG: 15)  --learning-rate X
                --trigger opcua  agents train only in the idle windows of a simulated PLC
                --encoding f32|f16|q8 (f32)  --delta (updates as differences to the base model)
                --dashboard  also serve the dashboard (a free loopback port) and print its address
  broker      run the embedded MQTT broker (Aedes)          --config FILE [--port N]
  aggregator  run the aggregator                            --config FILE
  agent       run an edge agent                             --config FILE
  inspect     classify new images with the released global model, publish verdicts   --config FILE
  dashboard   a web page following the federation live, operator actions   --config FILE [--port N]
  plc-sim     a simulated PLC (OPC UA server), line state Running/Idle on a schedule (--help)
  passwd      add a user to a broker password file          --file FILE --user NAME (password on stdin)
  acl         render an access file as a Mosquitto acl_file --access FILE [--out FILE]
  classify    classify images with a stored model           --model DIR [--json] IMAGE...
  model-info  parameters and update bytes per round         [--model vgg19] [--size 224] [--head paper] [--json]
  pretrain    train a starting model on reference images    --data DIR --classes A,B,.. --out DIR [--model vgg11]
  dataset synth  write generated USB-inspection images      --out DIR [--seed N] [--size PX] [--scale X]
              (the 3 clients, an external set, cross-client probes, reference images for pretrain)
  experiment  the paper's comparison: centralized, local-only, federated all/head/random init;
              report.md, results.json, confusion matrices     --config FILE [--out DIR] [--mode in-process|mqtt]
  keygen      an Ed25519 key pair for signing global models --out DIR
  models      stored model versions: stage, sites' metrics, signature   --state DIR [--json]
  release     release a model version to the lines (MES command over MQTT)   VERSION --url URL --federation NAME
              [--username mes --password-file FILE] [--by NAME] [--reason TEXT]
  rollback    go back to the version released before (or VERSION)  [VERSION] (options as release)

Example configs are in examples/. Logs are JSON lines on stdout; set FEDLINE_LOG_LEVEL=debug for more.`;

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'broker':
      return runBroker(rest);
    case 'aggregator':
      return runAggregator(rest);
    case 'agent':
      return runAgent(rest);
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
      process.stdout.write(USAGE + '\n');
      return;
    default:
      process.stderr.write(`fedline: unknown command "${command}"\n\n${USAGE}\n`);
      process.exitCode = 2;
  }
}

function configArg(args: string[], extra: Record<string, { type: 'string' }> = {}): { config: string; values: Record<string, string | undefined> } {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, ...extra }, strict: true });
  if (!values.config) {
    process.stderr.write('fedline: --config FILE is required (see examples/)\n');
    process.exit(2);
  }
  return { config: values.config, values: values as Record<string, string | undefined> };
}

async function runBroker(args: string[]): Promise<void> {
  const { config: file, values } = configArg(args, { port: { type: 'string' } });
  let log = createLogger({ name: 'broker' });
  try {
    const loaded = loadConfigFile(brokerConfigSchema, file);
    const config = values.port !== undefined ? { ...loaded, port: Number(values.port) } : loaded;
    log = createLogger({ name: 'broker', ...(config.logLevel ? { level: config.logLevel } : {}) });
    // Each service's modules load only when its command runs: `fedline aggregator` never loads training/.
    const { startBroker } = await import('../broker/main.js');
    const broker = await startBroker(config, log);
    onShutdown(log, () => broker.close());
    notifyReady({ url: broker.url, port: broker.port, host: broker.host, tlsUrl: broker.tlsUrl });
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
    notifyReady({ federation: config.federation });
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
    notifyReady({ agent: config.agentId });
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
    notifyReady({ agent: config.agentId, verdictTopic: running.verdictTopic });
  } catch (err) {
    fatal(log, err);
  }
}

main(process.argv.slice(2)).catch((err: Error) => {
  process.stderr.write(`fedline: ${err.message}\n`);
  process.exit(1);
});
