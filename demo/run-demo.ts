import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { Journal, RoundRecord } from '../aggregator/aggregator.js';
import { generateDataset, generateReferenceDataset, INSPECTION_CLASSES, PAPER_CLIENTS } from '../synthetic-data/generate.js';
import { silentLogger } from '../shared/util/logger.js';
import { updateEncodings, type UpdateEncoding } from '../shared/bundle/value-encodings.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { createTopics, defaultRoot } from '../shared/protocol/topics.js';
import { writeDemoCredentials } from './credentials.js';
import { parsePlcSchedule } from './plc-simulator.js';
import { freeTcpPort } from '../shared/util/free-port.js';
import { architectures, VGG_MIN_INPUT, type Architecture } from '../training/models.js';
import { ProcessGroup } from './process-group.js';

const FEDERATION = 'demo';

export interface DemoOptions {
  rounds: number;
  out: string;
  seed: number;
  epochs: number;
  size: number;
  scale: number;
  /** always: agents train as soon as a round asks; opcua: only in the idle windows of a simulated PLC. */
  trigger: 'always' | 'opcua';
  /** The simulated PLC's cycle (--trigger opcua), STATE:SECONDS,... */
  plcSchedule: string;
  /** small-cnn (default, fast) or the paper's vgg11 / vgg16 / vgg19. */
  model: Architecture;
  /** all: every weight trains and travels (the paper's Process1); head: only the classifier head (Process2). */
  federate: 'all' | 'head';
  /** Filter-count multiplier of the model (VGG default 0.25 here, to stay quick on a CPU). */
  width: number;
  /** A tfjs layers model folder with pretrained weights (by layer name), or null for a seeded init. */
  initFrom: string | null;
  /** Learning rate of round 1 (decays 0.85 per round). */
  learningRate: number;
  /** Epochs of central pretraining on reference images before the federation (0: none, a seeded init). */
  pretrainEpochs: number;
  /** How agents encode their updates (f32, f16, q8) and whether as differences to the base model. */
  encoding: UpdateEncoding;
  delta: boolean;
}

function parseDemoArgs(args: string[]): DemoOptions {
  const { values } = parseArgs({
    args,
    options: {
      rounds: { type: 'string', default: '12' },
      out: { type: 'string', default: 'demo-out' },
      seed: { type: 'string', default: '42' },
      epochs: { type: 'string', default: '2' },
      size: { type: 'string', default: '32' },
      scale: { type: 'string', default: '1' },
      trigger: { type: 'string', default: 'always' },
      'plc-schedule': { type: 'string', default: 'Running:6,Idle:9' },
      model: { type: 'string', default: 'small-cnn' },
      federate: { type: 'string', default: 'all' },
      width: { type: 'string' },
      'init-from': { type: 'string' },
      'learning-rate': { type: 'string' },
      'pretrain-epochs': { type: 'string' },
      encoding: { type: 'string', default: 'f32' },
      delta: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const int = (name: string, v: string | undefined, min: number, max: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}, got "${v}"`);
    return n;
  };
  const scale = Number(values.scale);
  if (!(scale > 0 && scale <= 10)) throw new Error(`--scale must be in (0, 10], got "${values.scale}"`);
  if (values.trigger !== 'always' && values.trigger !== 'opcua') throw new Error(`--trigger must be "always" or "opcua", got "${values.trigger}"`);
  const phases = parsePlcSchedule(values['plc-schedule']!);
  if (!phases.some((p) => p.state === 'Idle')) throw new Error('--plc-schedule needs an Idle phase, e.g. Running:6,Idle:9');
  const model = values.model as Architecture;
  if (!(architectures as readonly string[]).includes(model)) throw new Error(`--model must be one of ${architectures.join(', ')}, got "${values.model}"`);
  if (values.federate !== 'all' && values.federate !== 'head') throw new Error(`--federate must be all or head, got "${values.federate}"`);
  const vgg = model !== 'small-cnn';
  const width = Number(values.width ?? (vgg ? '0.25' : '1'));
  if (!(width > 0 && width <= 4)) throw new Error(`--width must be in (0, 4], got "${values.width}"`);
  const size = int('size', values.size, 16, 256);
  if (vgg && size < VGG_MIN_INPUT) throw new Error(`--size must be at least ${VGG_MIN_INPUT} for ${model} (five 2x2 poolings)`);
  const learningRate = Number(values['learning-rate'] ?? (vgg ? '0.0005' : '0.004'));
  if (!(learningRate > 0 && learningRate < 1)) throw new Error(`--learning-rate must be in (0, 1), got "${values['learning-rate']}"`);
  const encoding = values.encoding as UpdateEncoding;
  if (!updateEncodings.includes(encoding)) throw new Error(`--encoding must be one of ${updateEncodings.join(', ')}, got "${values.encoding}"`);
  return {
    trigger: values.trigger,
    plcSchedule: values['plc-schedule']!,
    rounds: int('rounds', values.rounds, 1, 1000),
    out: resolve(values.out!),
    seed: int('seed', values.seed, 0, 2 ** 31),
    epochs: int('epochs', values.epochs, 1, 100),
    size,
    scale,
    model,
    federate: values.federate,
    width,
    initFrom: values['init-from'] ? resolve(values['init-from']) : null,
    learningRate,
    // A VGG from a random init needs many rounds (the paper: 20+); like the paper, start it from
    // pretrained weights: here a base trained on reference images of other products.
    pretrainEpochs: int('pretrain-epochs', values['pretrain-epochs'] ?? (vgg && !values['init-from'] ? '15' : '0'), 0, 100),
    encoding,
    delta: values.delta ?? false,
  };
}

const mb = (bytes: number) => (bytes / 1e6).toFixed(2);
const pct = (x: number | undefined) => (x === undefined ? '   -  ' : x.toFixed(3).padStart(6));

/** `npm run demo`: a whole federation on this machine, each part its own process, talking MQTT over loopback. */
export async function runDemo(args: string[]): Promise<number> {
  let options: DemoOptions;
  try {
    options = parseDemoArgs(args);
  } catch (err) {
    process.stderr.write(`fedline demo: ${(err as Error).message}\n`);
    return 2;
  }
  const t0 = Date.now();
  const elapsed = () => `[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s]`;
  const say = (line: string) => process.stdout.write(`${elapsed()} ${line}\n`);
  const { out } = options;
  const dirs = { data: join(out, 'data'), state: join(out, 'state'), config: join(out, 'config'), logs: join(out, 'logs') };
  // Only the folders the demo owns are replaced; anything else under --out is left alone.
  for (const d of Object.values(dirs)) await rm(d, { recursive: true, force: true });
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });

  say(
    `model ${options.model}${options.model !== 'small-cnn' ? ` (width x${options.width})` : ''}, federate ${options.federate} ` +
      `(${options.federate === 'all' ? "every weight trains and travels: the paper's Process1" : "feature extractor frozen, only the head trains and travels: the paper's Process2"})` +
      `${options.initFrom ? `, initial weights from ${options.initFrom}` : ''}`,
  );
  say(`generating ${PAPER_CLIENTS.length} clients' inspection images (${options.size}x${options.size} px, seed ${options.seed}) in ${dirs.data}`);
  const data = await generateDataset({ out: dirs.data, seed: options.seed, size: options.size, scale: options.scale });
  for (const c of data.clients) say(`  ${c.name}: ${Object.entries(c.counts).map(([k, v]) => `${k} ${v}`).join(', ')}`);

  if (options.pretrainEpochs > 0 && !options.initFrom) {
    const refDir = join(out, 'reference-data');
    const baseDir = join(dirs.state, 'pretrained-base');
    await rm(refDir, { recursive: true, force: true });
    const ref = await generateReferenceDataset({ out: refDir, seed: options.seed + 1, size: options.size, scale: options.scale });
    say(`pretraining a ${options.model} base on ${ref.files} reference images of other products (${options.pretrainEpochs} epochs, in this process) in ${refDir}`);
    const { pretrainBase } = await import('../training/pretrain.js');
    const r = await pretrainBase({
      dataDir: refDir,
      model: { architecture: options.model, width: options.width, inputShape: [options.size, options.size, 3], classes: [...INSPECTION_CLASSES], seed: options.seed, normalization: 'per-image' },
      epochs: options.pretrainEpochs,
      batchSize: 32,
      learningRate: options.learningRate,
      out: baseDir,
    });
    say(`pretrained base: accuracy ${r.metrics.accuracy.toFixed(3)} on held-out reference images, ${(r.trainMs / 1000).toFixed(1)} s (${r.backend}); the federation starts from it (${baseDir}), with a new seeded head`);
    options.initFrom = baseDir;
  }

  const group = new ProcessGroup();
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

  let observer: MqttTransport | null = null;
  try {
    // 0. credentials for this run: the broker refuses anonymous clients, as in a factory
    const agents = PAPER_CLIENTS.map((c) => c.name);
    const topics = createTopics(defaultRoot(FEDERATION));
    const creds = await writeDemoCredentials(dirs.config, topics.root, [
      { username: 'aggregator', role: 'aggregator', read: [], write: [] },
      ...agents.map((a) => ({ username: a, role: 'agent' as const, read: [], write: [] })),
      { username: 'observer', role: 'mes', read: [], write: [] },
    ]);
    // 1. broker on a free loopback port
    const brokerConfig = join(dirs.config, 'broker.json');
    await writeFile(brokerConfig, JSON.stringify({ host: '127.0.0.1', port: 0, auth: creds.auth }, null, 2));
    const { child: brokerChild, ready: brokerReady } = await group.start('broker', ['broker', '--config', brokerConfig], join(dirs.logs, 'broker.log'));
    const url = String(brokerReady.url);
    say(`broker (Aedes) listening on ${url}, logins and access rules on [pid ${brokerChild.proc.pid}]`);

    // 2. observer: what an MES would see
    observer = await MqttTransport.connect({ url, clientId: 'fedline-demo-observer', logger: silentLogger(), username: 'observer', password: creds.password('observer') });
    const states = new Map<string, string>();
    const windows = new WindowTally();
    let lastProgressLine = 0;
    await observer.subscribe(topics.statusAll(), (m) => {
      try {
        const s = JSON.parse(m.payload.toString('utf8')) as { agent: string; state: string; progress: number | null; detail: string | null; round: number | null };
        const prev = states.get(s.agent)?.split(' ')[0];
        windows.observe(s.agent, s.state, s.round, Date.now());
        const progress = s.progress !== null ? ` ${Math.round(s.progress * 100)}%` : '';
        states.set(s.agent, `${s.state}${progress}`);
        if (prev !== s.state && s.state !== 'offline') say(`  ${s.agent.padEnd(8)} ${s.state}${s.detail ? `: ${s.detail}` : ''}`);
        if (Date.now() - lastProgressLine > 4000 && [...states.values()].some((v) => v.startsWith('training') || v.startsWith('uploading') || v.startsWith('downloading'))) {
          lastProgressLine = Date.now();
          say(`  progress: ${[...states.entries()].sort().map(([a, v]) => `${a} ${v}`).join(' | ')}`);
        }
      } catch {
        // not our business to validate here; the aggregator counts bad status messages
      }
    });
    await observer.subscribe(topics.eventsAll(), (m) => {
      try {
        const e = JSON.parse(m.payload.toString('utf8')) as Record<string, unknown> & { type: string };
        if (e.type === 'round-started') say(`round ${e.round} started (${e.kind}, base model v${e.baseVersion}, agents ${(e.selected as string[]).join(', ')})`);
        else if (e.type === 'round-completed') {
          const r = e as unknown as RoundRecord;
          say(
            `round ${r.round} completed: ${r.outcome}${r.newVersion !== null ? ` -> model v${r.newVersion}` : ''}, ${r.participants.length} update(s), ` +
              `up ${mb(r.bytesUp)} MB, down ${mb(r.bytesDown)} MB, ${((r.durationMs ?? 0) / 1000).toFixed(1)} s`,
          );
          if (options.trigger === 'opcua') say(`  training windows in round ${r.round}: ${windows.describe(r.round, agents, Date.now())}`);
        } else if (e.type === 'model-published') say(`model v${e.version} published (${mb(Number(e.bytes))} MB, sha256 ${String(e.sha256).slice(0, 12)}…)`);
        else if (e.type === 'alert') say(`ALERT ${e.code}: ${e.message}`);
      } catch {
        // ignore
      }
    });

    // 3. with --trigger opcua: a simulated PLC, one production line per agent
    let plcEndpoint: string | null = null;
    if (options.trigger === 'opcua') {
      const plcPort = await freeTcpPort();
      const cycle = parsePlcSchedule(options.plcSchedule).reduce((t, p) => t + p.durationMs, 0);
      const { child: plc, ready } = await group.start(
        'plc-sim',
        ['plc-sim', '--port', String(plcPort), '--lines', String(agents.length), '--schedule', options.plcSchedule, '--offset', String(cycle / agents.length / 1000), '--pki', join(dirs.state, 'plc-sim-pki')],
        join(dirs.logs, 'plc-sim.log'),
      );
      plcEndpoint = String(ready.endpoint);
      say(`PLC simulator (OPC UA) on ${plcEndpoint}: lines ${agents.map((a, i) => `Line${i + 1} -> ${a}`).join(', ')}; cycle ${options.plcSchedule} (s) [pid ${plc.proc.pid}]`);
      plc.proc.on('message', (msg: { type?: string; line?: number; state?: string }) => {
        if (msg?.type === 'line-state') say(`  PLC Line${msg.line} (${agents[msg.line! - 1]}): ${msg.state}`);
      });
    }

    // 4. aggregator and agents, each its own process
    const aggregatorConfig = join(dirs.config, 'aggregator.json');
    await writeFile(
      aggregatorConfig,
      JSON.stringify(
        {
          federation: FEDERATION,
          mqtt: { url, ...creds.login('aggregator') },
          stateDir: join(dirs.state, 'aggregator'),
          agents,
          rounds: options.rounds,
          minClients: agents.length,
          roundDeadlineMs: 300_000,
          waitForAgentsMs: 60_000,
          task: { epochs: options.epochs, batchSize: 16, learningRate: options.learningRate, learningRateDecay: 0.85, optimizer: 'adam', classWeighting: 'auto', federated: options.federate },
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
          evaluateFinalModel: true,
          exitWhenComplete: true,
        },
        null,
        2,
      ),
    );
    const { child: aggregator } = await group.start('aggregator', ['aggregator', '--config', aggregatorConfig], join(dirs.logs, 'aggregator.log'));
    say(`aggregator started [pid ${aggregator.proc.pid}]`);
    for (const [i, agent] of agents.entries()) {
      const file = join(dirs.config, `agent-${agent}.json`);
      const trigger = plcEndpoint
        ? { type: 'opcua', endpoint: plcEndpoint, nodeId: `ns=1;s=Line${i + 1}.State`, when: { equals: 'Idle' }, samplingIntervalMs: 200, retryInitialDelayMs: 500 }
        : { type: 'always' };
      await writeFile(
        file,
        JSON.stringify(
          { agentId: agent, federation: FEDERATION, mqtt: { url, ...creds.login(agent) }, stateDir: join(dirs.state, agent), data: { dir: join(dirs.data, agent), testFraction: 0.2, splitSeed: options.seed }, trigger },
          null,
          2,
        ),
      );
      const { child } = await group.start(agent, ['agent', '--config', file], join(dirs.logs, `${agent}.log`));
      say(`agent ${agent} started [pid ${child.proc.pid}]`);
    }

    // 5. the federation runs until the aggregator exits
    const code = await aggregator.exited;
    if (code !== 0) throw new Error(`the aggregator exited with code ${code}; see ${aggregator.logFile}`);

    const journal = JSON.parse(await readFile(join(dirs.state, 'aggregator', 'journal.json'), 'utf8')) as Journal;
    const summary = buildSummary(journal, options, join(dirs.state, 'aggregator', 'models'), Date.now() - t0);
    if (options.trigger === 'opcua') for (const r of summary.rounds) r.windows = windows.of(r.round, agents);
    await writeFile(join(out, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
    process.stdout.write('\n' + renderTable(summary) + '\n');
    if (options.trigger === 'opcua') process.stdout.write('\n' + renderWindowTable(summary) + '\n');
    process.stdout.write(`\nfinal global model v${summary.finalModel.version}: ${summary.finalModel.dir}\nsummary: ${join(out, 'summary.json')}   logs: ${dirs.logs}\n`);
    process.stdout.write(`total time ${(summary.durationMs / 1000).toFixed(1)} s\n`);
    return 0;
  } catch (err) {
    say(`demo failed: ${(err as Error).message}`);
    return 1;
  } finally {
    await observer?.close().catch(() => undefined);
    await group.stopAll();
  }
}

export interface DemoSummary {
  federation: string;
  options: DemoOptions;
  agents: string[];
  durationMs: number;
  rounds: {
    round: number;
    kind: string;
    outcome: string | null;
    baseVersion: number;
    newVersion: number | null;
    participants: string[];
    sampleCounts: Record<string, number>;
    /** Accuracy of the global model this round produced (or kept), on each agent's local test split. */
    globalAccuracy: Record<string, number>;
    globalBalancedAccuracy: Record<string, number>;
    /** Each agent's own model after local training, on its local test split. */
    localAccuracy: Record<string, number>;
    bytesUp: number;
    bytesDown: number;
    durationMs: number | null;
    trainMs: Record<string, number>;
    /** --trigger opcua: per agent, time spent waiting for its training window and paused in this round. */
    windows?: Record<string, WindowStats>;
  }[];
  finalModel: { version: number; dir: string; accuracy: Record<string, number>; balancedAccuracy: Record<string, number> };
}

/** Per round: the model it ends with, evaluated by each agent at the start of the next round (or the final evaluation round). */
export function buildSummary(journal: Journal, options: DemoOptions, modelsDir: string, durationMs: number): DemoSummary {
  const evalOf = (version: number) => {
    const r = journal.rounds.find((x) => x.baseVersion === version && Object.keys(x.baseMetrics).length > 0);
    return r?.baseMetrics ?? {};
  };
  const pick = (m: Record<string, { accuracy: number; balancedAccuracy: number }>, key: 'accuracy' | 'balancedAccuracy') =>
    Object.fromEntries(Object.entries(m).map(([a, v]) => [a, v[key]]));
  const finalVersion = journal.finalVersion ?? journal.currentVersion;
  const finalEval = evalOf(finalVersion);
  const agents = [...new Set(journal.rounds.flatMap((r) => r.selected))].sort();
  return {
    federation: journal.federation,
    options,
    agents,
    durationMs,
    rounds: journal.rounds
      .filter((r) => r.kind === 'train')
      .map((r) => {
        const endVersion = r.newVersion ?? r.baseVersion;
        const m = evalOf(endVersion);
        return {
          round: r.round,
          kind: r.kind,
          outcome: r.outcome,
          baseVersion: r.baseVersion,
          newVersion: r.newVersion,
          participants: r.participants,
          sampleCounts: r.sampleCounts,
          globalAccuracy: pick(m, 'accuracy'),
          globalBalancedAccuracy: pick(m, 'balancedAccuracy'),
          localAccuracy: Object.fromEntries(Object.entries(r.localMetrics).filter(([, v]) => v).map(([a, v]) => [a, v!.accuracy])),
          bytesUp: r.bytesUp,
          bytesDown: r.bytesDown,
          durationMs: r.durationMs,
          trainMs: r.trainMs,
        };
      }),
    finalModel: { version: finalVersion, dir: join(modelsDir, `v${finalVersion}`), accuracy: pick(finalEval, 'accuracy'), balancedAccuracy: pick(finalEval, 'balancedAccuracy') },
  };
}

export function renderTable(summary: DemoSummary): string {
  const agents = summary.agents;
  const header = ['round', 'outcome  ', 'model', ...agents.map((a) => a.padStart(8)), '   up MB', ' down MB', ' time s'];
  const lines = [`global model accuracy on each agent's local test split, per round:`, header.join('  ')];
  for (const r of summary.rounds) {
    lines.push(
      [
        String(r.round).padStart(5),
        (r.outcome ?? '-').padEnd(9),
        `v${r.newVersion ?? r.baseVersion}`.padStart(5),
        ...agents.map((a) => pct(r.globalAccuracy[a]).padStart(8)),
        mb(r.bytesUp).padStart(8),
        mb(r.bytesDown).padStart(8),
        ((r.durationMs ?? 0) / 1000).toFixed(1).padStart(7),
      ].join('  '),
    );
  }
  return lines.join('\n');
}

export interface WindowStats {
  /** ms in waiting-window (the line was running when the round asked for training). */
  waitedMs: number;
  /** ms paused mid-training (the line started running again). */
  pausedMs: number;
  pauses: number;
}

/** Time each agent spends outside its training window, per round, from the status messages an MES sees. */
export class WindowTally {
  private readonly stats = new Map<string, WindowStats>();
  private readonly current = new Map<string, { state: string; round: number | null; since: number }>();

  private entry(round: number, agent: string): WindowStats {
    const key = `${round}/${agent}`;
    let e = this.stats.get(key);
    if (!e) this.stats.set(key, (e = { waitedMs: 0, pausedMs: 0, pauses: 0 }));
    return e;
  }

  observe(agent: string, state: string, round: number | null, now: number): void {
    const prev = this.current.get(agent);
    if (prev && prev.state === state && prev.round === round) return;
    this.close(agent, now);
    if (round !== null && state === 'paused') this.entry(round, agent).pauses++;
    this.current.set(agent, { state, round, since: now });
  }

  private close(agent: string, now: number): void {
    const prev = this.current.get(agent);
    if (!prev || prev.round === null) return;
    if (prev.state === 'waiting-window') this.entry(prev.round, agent).waitedMs += now - prev.since;
    if (prev.state === 'paused') this.entry(prev.round, agent).pausedMs += now - prev.since;
    prev.since = now;
  }

  of(round: number, agents: readonly string[]): Record<string, WindowStats> {
    return Object.fromEntries(agents.map((a) => [a, { ...(this.stats.get(`${round}/${a}`) ?? { waitedMs: 0, pausedMs: 0, pauses: 0 }) }]));
  }

  describe(round: number, agents: readonly string[], now: number): string {
    for (const a of agents) if (this.current.get(a)?.round === round) this.close(a, now);
    return agents
      .map((a) => {
        const w = this.of(round, [a])[a]!;
        return `${a} waited ${(w.waitedMs / 1000).toFixed(1)} s${w.pauses ? `, paused ${w.pauses}x ${(w.pausedMs / 1000).toFixed(1)} s` : ''}`;
      })
      .join('; ');
  }
}

export function renderWindowTable(summary: DemoSummary): string {
  const agents = summary.agents;
  const lines = [
    'time each agent waited for an idle window before training (wait s) and was paused mid-training by the line (pauses, paused s), per round:',
    ['round', ...agents.map((a) => `${a} wait s / pauses / paused s`.padStart(32))].join('  '),
  ];
  for (const r of summary.rounds) {
    if (!r.windows) continue;
    lines.push(
      [String(r.round).padStart(5), ...agents.map((a) => {
        const w = r.windows![a]!;
        return `${(w.waitedMs / 1000).toFixed(1).padStart(6)} / ${String(w.pauses).padStart(2)} / ${(w.pausedMs / 1000).toFixed(1).padStart(5)}`.padStart(32);
      })].join('  '),
    );
  }
  return lines.join('\n');
}
