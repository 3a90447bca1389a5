import { EventEmitter } from 'node:events';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadOpcua, type Opcua } from '../edge-agent/triggers/opcua-runtime.js';
import { createLogger, silentLogger, type Logger } from '../shared/logger.js';
import { notifyReady, onShutdown, fatal } from './lifecycle.js';

/**
 * A simulated PLC: a node-opcua server whose production lines report their state in a String
 * variable `ns=1;s=Line<N>.State` ("Running" or "Idle", alternating on a schedule) and a Boolean
 * `ns=1;s=Line<N>.Idle`. It lets the demo and the tests exercise the agents' OPC UA training
 * windows without a factory. Endpoints: security None, and Basic256Sha256 Sign / SignAndEncrypt;
 * anonymous access, or user names and passwords when `users` are given.
 */

export interface PlcPhase {
  state: string;
  durationMs: number;
}

export interface PlcSimOptions {
  host?: string;
  /** TCP port. Default 4840 (the OPC UA port). */
  port?: number;
  /** Lines Line1..LineN. Default 1. */
  lines?: number;
  /** The cycle every line runs through; empty: lines keep `initialState` until set() changes it. */
  schedule?: PlcPhase[];
  /** Line N starts its cycle (N-1) * offsetMs later, so the lines are not idle at the same time. Default 0. */
  lineOffsetMs?: number;
  initialState?: string;
  /** Server certificate store. */
  pkiDir: string;
  /** When given, sessions must log in with one of these (anonymous is refused unless allowAnonymous). */
  users?: { username: string; password: string }[];
  allowAnonymous?: boolean;
  logger?: Logger;
}

export interface LineStateChange {
  line: number;
  state: string;
  at: number;
}

export interface RunningPlcSim extends EventEmitter {
  readonly endpoint: string;
  readonly port: number;
  nodeId(line: number): string;
  state(line: number): string;
  /** Set a line's state now (its schedule, if any, continues from the next phase change). */
  set(line: number, state: string): void;
  close(): Promise<void>;
}

/** Parse "Running:20,Idle:10" (seconds) into phases. */
export function parsePlcSchedule(text: string): PlcPhase[] {
  if (text.trim() === '') return [];
  return text.split(',').map((part) => {
    const m = /^\s*([A-Za-z][A-Za-z0-9_ -]*):(\d+(?:\.\d+)?)\s*$/.exec(part);
    if (!m) throw new Error(`schedule part "${part}" is not STATE:SECONDS (e.g. Running:20,Idle:10)`);
    const durationMs = Math.round(Number(m[2]) * 1000);
    if (durationMs <= 0) throw new Error(`schedule part "${part}": the duration must be positive`);
    return { state: m[1]!.trim(), durationMs };
  });
}

export async function startPlcSimulator(options: PlcSimOptions): Promise<RunningPlcSim> {
  const log = options.logger ?? silentLogger();
  const opcua: Opcua = await loadOpcua(log);
  const lines = options.lines ?? 1;
  const schedule = options.schedule ?? [];
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 4840;
  const users = options.users ?? [];
  const states: string[] = Array.from({ length: lines }, () => options.initialState ?? schedule[0]?.state ?? 'Running');

  const server = new opcua.OPCUAServer({
    port,
    hostname: host,
    alternateHostname: [host],
    buildInfo: { productName: 'fedline PLC simulator', manufacturerName: 'fedline' },
    serverCertificateManager: new opcua.OPCUACertificateManager({ rootFolder: join(options.pkiDir, 'server'), automaticallyAcceptUnknownCertificate: true }),
    userCertificateManager: new opcua.OPCUACertificateManager({ rootFolder: join(options.pkiDir, 'users'), automaticallyAcceptUnknownCertificate: true }),
    securityModes: [opcua.MessageSecurityMode.None, opcua.MessageSecurityMode.Sign, opcua.MessageSecurityMode.SignAndEncrypt],
    securityPolicies: [opcua.SecurityPolicy.None, opcua.SecurityPolicy.Basic256Sha256],
    allowAnonymous: users.length === 0 || options.allowAnonymous === true,
    userManager: { isValidUser: (username: string, password: string) => users.some((u) => u.username === username && u.password === password) },
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace!;
  const ns = addressSpace.getOwnNamespace();
  const plc = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: 'PLC' });
  const stateVars: ReturnType<typeof ns.addVariable>[] = [];
  const idleVars: ReturnType<typeof ns.addVariable>[] = [];
  for (let i = 0; i < lines; i++) {
    const name = `Line${i + 1}`;
    stateVars.push(
      ns.addVariable({ componentOf: plc, nodeId: `s=${name}.State`, browseName: `${name}.State`, dataType: 'String', minimumSamplingInterval: 50, value: { dataType: opcua.DataType.String, value: states[i]! } }),
    );
    idleVars.push(
      ns.addVariable({ componentOf: plc, nodeId: `s=${name}.Idle`, browseName: `${name}.Idle`, dataType: 'Boolean', minimumSamplingInterval: 50, value: { dataType: opcua.DataType.Boolean, value: states[i] === 'Idle' } }),
    );
  }
  await server.start();
  const endpoint = `opc.tcp://${host}:${port}`;
  log.info({ endpoint, lines, schedule }, 'PLC simulator listening');

  const emitter = new EventEmitter() as RunningPlcSim;
  const timers = new Set<NodeJS.Timeout>();
  const apply = (line: number, state: string) => {
    states[line] = state;
    stateVars[line]!.setValueFromSource({ dataType: opcua.DataType.String, value: state });
    idleVars[line]!.setValueFromSource({ dataType: opcua.DataType.Boolean, value: state === 'Idle' });
    log.info({ line: line + 1, state }, 'line state');
    emitter.emit('state', { line: line + 1, state, at: Date.now() } satisfies LineStateChange);
  };

  // Each line walks through the cycle, starting (line-1) * offset into it.
  const cycleMs = schedule.reduce((s, p) => s + p.durationMs, 0);
  const started = Date.now();
  const runLine = (line: number) => {
    if (cycleMs === 0) return;
    const offset = (line * (options.lineOffsetMs ?? 0)) % cycleMs;
    const step = () => {
      const pos = (Date.now() - started + offset) % cycleMs;
      let acc = 0;
      for (const phase of schedule) {
        if (pos < acc + phase.durationMs) {
          if (states[line] !== phase.state) apply(line, phase.state);
          const t = setTimeout(step, acc + phase.durationMs - pos + 1);
          timers.add(t);
          t.unref?.();
          return;
        }
        acc += phase.durationMs;
      }
    };
    step();
  };
  for (let i = 0; i < lines; i++) runLine(i);

  let closing: Promise<void> | null = null;
  Object.assign(emitter, {
    endpoint,
    port,
    nodeId: (line: number) => `ns=1;s=Line${line}.State`,
    state: (line: number) => states[line - 1]!,
    set: (line: number, state: string) => apply(line - 1, state),
    close: () => {
      closing ??= (async () => {
        for (const t of timers) clearTimeout(t);
        await server.shutdown(0);
        log.info('PLC simulator stopped');
      })();
      return closing;
    },
  });
  return emitter;
}

/** A free TCP port on `host` (for tests and the demo; node-opcua needs a concrete port). */
export function freeTcpPort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolvePort(port));
    });
  });
}

export const PLC_SIM_USAGE = `fedline plc-sim: a simulated PLC (OPC UA server) whose line state alternates on a schedule

options:
  --port N              TCP port (4840; 0 picks a free one)
  --host ADDR           address to listen on (127.0.0.1)
  --lines N             lines Line1..LineN (1)
  --schedule SPEC       the cycle, STATE:SECONDS,...  (Running:20,Idle:10)
  --offset SECONDS      line N starts (N-1) * offset seconds later in the cycle (0)
  --pki DIR             server certificate store (./.fedline-plc-sim/pki)
  --user NAME:PASSWORD  require this login (repeatable); anonymous is then refused

variables: ns=1;s=Line<N>.State (String), ns=1;s=Line<N>.Idle (Boolean)`;

/** `fedline plc-sim ...` */
export async function runPlcSim(args: string[]): Promise<void> {
  const log = createLogger({ name: 'plc-sim' });
  try {
    const { values } = parseArgs({
      args,
      options: {
        port: { type: 'string', default: '4840' },
        host: { type: 'string', default: '127.0.0.1' },
        lines: { type: 'string', default: '1' },
        schedule: { type: 'string', default: 'Running:20,Idle:10' },
        offset: { type: 'string', default: '0' },
        pki: { type: 'string', default: '.fedline-plc-sim/pki' },
        user: { type: 'string', multiple: true },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    });
    if (values.help) {
      process.stdout.write(PLC_SIM_USAGE + '\n');
      return;
    }
    const int = (name: string, v: string, min: number, max: number) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}, got "${v}"`);
      return n;
    };
    const offset = Number(values.offset);
    if (!(offset >= 0)) throw new Error(`--offset must be a number of seconds >= 0, got "${values.offset}"`);
    const users = (values.user ?? []).map((u) => {
      const i = u.indexOf(':');
      if (i < 1) throw new Error(`--user must be NAME:PASSWORD, got "${u}"`);
      return { username: u.slice(0, i), password: u.slice(i + 1) };
    });
    let port = int('port', values.port!, 0, 65535);
    if (port === 0) port = await freeTcpPort(values.host);
    const sim = await startPlcSimulator({
      host: values.host!,
      port,
      lines: int('lines', values.lines!, 1, 100),
      schedule: parsePlcSchedule(values.schedule!),
      lineOffsetMs: Math.round(offset * 1000),
      pkiDir: resolve(values.pki!),
      users,
      logger: log,
    });
    sim.on('state', (s: LineStateChange) => process.send?.({ type: 'line-state', ...s }));
    onShutdown(log, () => sim.close());
    notifyReady({ endpoint: sim.endpoint, port: sim.port, lines: Number(values.lines) });
  } catch (err) {
    fatal(log, err);
  }
}
