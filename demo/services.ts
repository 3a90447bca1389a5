import { randomBytes } from 'node:crypto';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { INSPECTION_CLASSES } from '../synthetic-data/generate.js';
import { hashPassword } from '../broker/passwords.js';
import { freeTcpPort } from '../shared/util/free-port.js';
import { generateSigningKeys } from '../shared/protocol/model-signature.js';
import type { Topics } from '../shared/protocol/topics.js';
import { writeDemoCredentials, type DemoCredentials } from './credentials.js';
import type { DemoDirs, DemoOptions, Say } from './demo-options.js';
import { parsePlcSchedule } from './plc-simulator.js';
import type { Child, ProcessGroup } from './process-group.js';

export const DEMO_FEDERATION = 'demo';

/** Credentials for this run (the broker refuses anonymous clients, as in a factory), then the broker on a free loopback port. */
export async function startDemoBroker(
  group: ProcessGroup,
  dirs: DemoDirs,
  topics: Topics,
  agents: readonly string[],
  say: Say,
): Promise<{ url: string; creds: DemoCredentials }> {
  const creds = await writeDemoCredentials(dirs.config, topics.root, [
    { username: 'aggregator', role: 'aggregator', read: [], write: [] },
    ...agents.map((a) => ({ username: a, role: 'agent' as const, read: [], write: [] })),
    { username: 'observer', role: 'mes', read: [], write: [] },
    { username: 'dashboard', role: 'dashboard', operator: true, read: [], write: [] },
  ]);
  const brokerConfig = join(dirs.config, 'broker.json');
  await writeFile(brokerConfig, JSON.stringify({ host: '127.0.0.1', port: 0, auth: creds.auth }, null, 2));
  const { child, ready } = await group.start('broker', ['broker', '--config', brokerConfig], join(dirs.logs, 'broker.log'));
  const url = String(ready.url);
  say(`broker (Aedes) listening on ${url}, logins and access rules on [pid ${child.proc.pid}]`);
  return { url, creds };
}

/** With --trigger opcua: a simulated PLC, one production line per agent, their cycles offset evenly. Returns its endpoint. */
export async function startDemoPlc(group: ProcessGroup, dirs: DemoDirs, plcSchedule: string, agents: readonly string[], say: Say): Promise<string> {
  const plcPort = await freeTcpPort();
  const cycle = parsePlcSchedule(plcSchedule).reduce((t, p) => t + p.durationMs, 0);
  const { child: plc, ready } = await group.start(
    'plc-sim',
    [
      'plc-sim',
      '--port',
      String(plcPort),
      '--lines',
      String(agents.length),
      '--schedule',
      plcSchedule,
      '--offset',
      String(cycle / agents.length / 1000),
      '--pki',
      join(dirs.state, 'plc-sim-pki'),
    ],
    join(dirs.logs, 'plc-sim.log'),
  );
  const endpoint = String(ready.endpoint);
  say(
    `PLC simulator (OPC UA) on ${endpoint}: lines ${agents.map((a, i) => `Line${i + 1} -> ${a}`).join(', ')}; cycle ${plcSchedule} (s) [pid ${plc.proc.pid}]`,
  );
  plc.proc.on('message', (msg: { type?: string; line?: number; state?: string }) => {
    if (msg?.type === 'line-state') say(`  PLC Line${msg.line} (${agents[msg.line! - 1]}): ${msg.state}`);
  });
  return endpoint;
}

export interface DemoFederationSetup {
  options: DemoOptions;
  dirs: DemoDirs;
  agents: readonly string[];
  url: string;
  creds: DemoCredentials;
  /** The simulated PLC (--trigger opcua), or null: agents train whenever asked. */
  plcEndpoint: string | null;
}

/** A model signing key pair for this run (as `fedline keygen`): the aggregator signs every version, the agents refuse anything else. */
async function writeDemoSigningKeys(dirs: DemoDirs): Promise<{ signingKeyFile: string; modelPublicKeyFile: string }> {
  const { privatePem, publicPem } = generateSigningKeys();
  const signingKeyFile = join(dirs.config, 'model-signing.key');
  const modelPublicKeyFile = join(dirs.config, 'model-signing.pub');
  await writeFile(signingKeyFile, privatePem, { mode: 0o600 });
  await chmod(signingKeyFile, 0o600);
  await writeFile(modelPublicKeyFile, publicPem);
  return { signingKeyFile, modelPublicKeyFile };
}

/** The aggregator and the agents, each its own process with a config file written here. Returns the aggregator. */
export async function startDemoFederation(group: ProcessGroup, setup: DemoFederationSetup, say: Say): Promise<Child> {
  const { dirs, agents, url, creds, plcEndpoint } = setup;
  const keys = await writeDemoSigningKeys(dirs);
  const aggregatorConfig = join(dirs.config, 'aggregator.json');
  await writeFile(aggregatorConfig, JSON.stringify({ ...aggregatorConfigOf(setup), signingKeyFile: keys.signingKeyFile }, null, 2));
  const { child: aggregator } = await group.start('aggregator', ['aggregator', '--config', aggregatorConfig], join(dirs.logs, 'aggregator.log'));
  say(`aggregator started, strategy ${setup.options.strategy}, signing every model version [pid ${aggregator.proc.pid}]`);
  for (const [i, agent] of agents.entries()) {
    const file = join(dirs.config, `agent-${agent}.json`);
    const trigger = plcEndpoint
      ? {
          type: 'opcua',
          endpoint: plcEndpoint,
          nodeId: `ns=1;s=Line${i + 1}.State`,
          when: { equals: 'Idle' },
          samplingIntervalMs: 200,
          retryInitialDelayMs: 500,
        }
      : { type: 'always' };
    await writeFile(
      file,
      JSON.stringify(
        {
          agentId: agent,
          federation: DEMO_FEDERATION,
          mqtt: { url, ...creds.login(agent) },
          stateDir: join(dirs.state, agent),
          data: { dir: join(dirs.data, agent), testFraction: 0.2, splitSeed: setup.options.seed },
          modelPublicKeyFile: keys.modelPublicKeyFile,
          trigger,
        },
        null,
        2,
      ),
    );
    const { child } = await group.start(agent, ['agent', '--config', file], join(dirs.logs, `${agent}.log`));
    say(`agent ${agent} started [pid ${child.proc.pid}]`);
  }
  return aggregator;
}

function aggregatorConfigOf({ options, dirs, agents, url, creds }: DemoFederationSetup): Record<string, unknown> {
  return {
    federation: DEMO_FEDERATION,
    mqtt: { url, ...creds.login('aggregator') },
    stateDir: join(dirs.state, 'aggregator'),
    agents,
    rounds: options.rounds,
    minClients: agents.length,
    roundDeadlineMs: 300_000,
    waitForAgentsMs: 60_000,
    task: {
      epochs: options.epochs,
      batchSize: 16,
      learningRate: options.learningRate,
      learningRateDecay: 0.85,
      optimizer: 'adam',
      classWeighting: 'auto',
      federated: options.federate,
    },
    model: {
      architecture: options.model,
      width: options.width,
      inputShape: [options.size, options.size, 3],
      classes: [...INSPECTION_CLASSES],
      seed: options.seed,
      normalization: 'per-image',
      ...(options.initFrom ? { initFrom: options.initFrom } : {}),
    },
    encoding: options.encoding,
    delta: options.delta,
    strategy: options.strategy,
    evaluateFinalModel: true,
    exitWhenComplete: true,
  };
}

/**
 * With --dashboard: `fedline dashboard` as one more process, on a free loopback port, logged in to
 * the broker as `dashboard` (role dashboard, operator), with one operator login made for this run.
 */
export async function startDemoDashboard(group: ProcessGroup, dirs: DemoDirs, url: string, creds: DemoCredentials, say: Say): Promise<string> {
  const operatorPassword = randomBytes(9).toString('base64url');
  const operators = join(dirs.config, 'dashboard-operators.passwd');
  await writeFile(operators, `operator:${hashPassword(operatorPassword)}\n`, { mode: 0o600 });
  const file = join(dirs.config, 'dashboard.json');
  const config = {
    federation: DEMO_FEDERATION,
    mqtt: { url, ...creds.login('dashboard') },
    http: { host: '127.0.0.1', port: 0 },
    operators: { passwordFile: operators },
  };
  await writeFile(file, JSON.stringify(config, null, 2));
  const { child, ready } = await group.start('dashboard', ['dashboard', '--config', file], join(dirs.logs, 'dashboard.log'));
  const address = String(ready.url);
  say(`dashboard on ${address}  (operator login: operator / ${operatorPassword}) [pid ${child.proc.pid}]`);
  return address;
}
