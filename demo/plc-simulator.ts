import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadOpcua, pemToDer, type Opcua } from '../edge-agent/triggers/opcua-runtime.js';
import { silentLogger, type Logger } from '../shared/util/logger.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * A simulated PLC: a node-opcua server whose production lines report their state in a String
 * variable `ns=1;s=Line<N>.State` ("Running" or "Idle", alternating on a schedule), a Boolean
 * `ns=1;s=Line<N>.Idle` and an Int32 `ns=1;s=Line<N>.StateCode` (PackML-like: 4 Idle, 6 Running,
 * 0 any other state). It lets the demo and the tests exercise the agents' OPC UA training
 * windows without a factory. Endpoints: security None, and Basic256Sha256 Sign / SignAndEncrypt;
 * anonymous access, or user names and passwords when `users` are given. Tests can also make it
 * misbehave as real PLCs do: a Bad status on a line's state, the state variable deleted (and
 * added back), client certificates refused until a person trusts them.
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
  /** Accept any client's application certificate (true, the default); false: an unknown client certificate is refused and kept in `<pkiDir>/server/rejected/`. */
  trustUnknownClients?: boolean;
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
  /** Set a line's state now, with a Good status (its schedule, if any, continues from the next phase change). */
  set(line: number, state: string): void;
  /** Give a line's State variable a status other than Good (e.g. "BadSensorFailure"), keeping its value; set() makes it Good again. */
  setStatus(line: number, statusCode: string): void;
  /** Delete a line's State variable from the address space (a PLC program download without it); restoreState() adds it back. */
  deleteState(line: number): void;
  restoreState(line: number): void;
  /** Trust a client's application certificate (a PEM file), as a person registers it in a PLC's configuration. */
  trustClientCertificate(pemFile: string): Promise<void>;
  close(): Promise<void>;
}

/** Parse "Running:20,Idle:10" (seconds) into phases. */
export function parsePlcSchedule(text: string): PlcPhase[] {
  if (text.trim() === '') return [];
  return text.split(',').map((part) => {
    const m = /^\s*([A-Za-z][A-Za-z0-9_ -]*):(\d+(?:\.\d+)?)\s*$/.exec(part);
    if (!m) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `schedule part "${part}" is not STATE:SECONDS (e.g. Running:20,Idle:10)`);
    const durationMs = Math.round(Number(m[2]) * 1000);
    if (durationMs <= 0) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `schedule part "${part}": the duration must be positive`);
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

  const serverCertificateManager = new opcua.OPCUACertificateManager({
    rootFolder: join(options.pkiDir, 'server'),
    automaticallyAcceptUnknownCertificate: options.trustUnknownClients ?? true,
  });
  const server = new opcua.OPCUAServer({
    port,
    hostname: host,
    alternateHostname: [host],
    buildInfo: { productName: 'fedline PLC simulator', manufacturerName: 'fedline' },
    serverCertificateManager,
    userCertificateManager: new opcua.OPCUACertificateManager({ rootFolder: join(options.pkiDir, 'users'), automaticallyAcceptUnknownCertificate: true }),
    securityModes: [opcua.MessageSecurityMode.None, opcua.MessageSecurityMode.Sign, opcua.MessageSecurityMode.SignAndEncrypt],
    securityPolicies: [opcua.SecurityPolicy.None, opcua.SecurityPolicy.Basic256Sha256],
    allowAnonymous: users.length === 0 || options.allowAnonymous === true,
    userManager: { isValidUser: (username: string, password: string) => users.some((u) => u.username === username && u.password === password) },
  });
  await server.initialize();
  const { stateVars, idleVars, codeVars } = addLineVariables(opcua, server, states);
  await server.start();
  const endpoint = `opc.tcp://${host}:${port}`;
  log.info({ endpoint, lines, schedule }, 'PLC simulator listening');

  const emitter = new EventEmitter() as RunningPlcSim;
  const timers = new Set<NodeJS.Timeout>();
  const apply = (line: number, state: string) => {
    states[line] = state;
    stateVars[line]!.setValueFromSource({ dataType: opcua.DataType.String, value: state });
    idleVars[line]!.setValueFromSource({ dataType: opcua.DataType.Boolean, value: state === 'Idle' });
    codeVars[line]!.setValueFromSource({ dataType: opcua.DataType.Int32, value: stateCode(state) });
    log.info({ line: line + 1, state }, 'line state');
    emitter.emit('state', { line: line + 1, state, at: Date.now() } satisfies LineStateChange);
  };

  runSchedule(schedule, options.lineOffsetMs ?? 0, states, apply, timers);

  let closing: Promise<void> | null = null;
  Object.assign(emitter, {
    endpoint,
    port,
    nodeId: (line: number) => `ns=1;s=Line${line}.State`,
    state: (line: number) => states[line - 1]!,
    set: (line: number, state: string) => apply(line - 1, state),
    setStatus: (line: number, statusCode: string) => {
      const code = (opcua.StatusCodes as unknown as Record<string, import('node-opcua').StatusCode | undefined>)[statusCode];
      if (!code) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `no OPC UA status code "${statusCode}"`);
      stateVars[line - 1]!.setValueFromSource({ dataType: opcua.DataType.String, value: states[line - 1]! }, code);
      log.info({ line, statusCode }, 'line state status');
    },
    deleteState: (line: number) => {
      server.engine.addressSpace!.deleteNode(stateVars[line - 1]!);
      log.info({ line }, 'line state variable deleted');
    },
    restoreState: (line: number) => {
      stateVars[line - 1] = addStateVariable(opcua, server, line - 1, states[line - 1]!);
      log.info({ line }, 'line state variable added back');
    },
    trustClientCertificate: async (pemFile: string) => {
      await serverCertificateManager.trustCertificate(pemToDer(readFileSync(pemFile, 'utf8'), pemFile));
      log.info({ pemFile }, 'client certificate trusted');
    },
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

/** Line<N>.State (String), Line<N>.Idle (Boolean) and Line<N>.StateCode (Int32) of every line, under an object PLC, with their first values. */
function addLineVariables(opcua: Opcua, server: InstanceType<Opcua['OPCUAServer']>, states: readonly string[]) {
  const addressSpace = server.engine.addressSpace!;
  const ns = addressSpace.getOwnNamespace();
  ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: 'PLC', nodeId: 's=PLC' });
  const stateVars: ReturnType<typeof ns.addVariable>[] = [];
  const idleVars: ReturnType<typeof ns.addVariable>[] = [];
  const codeVars: ReturnType<typeof ns.addVariable>[] = [];
  const add = (name: string, dataType: 'Boolean' | 'Int32', value: boolean | number) =>
    ns.addVariable({
      componentOf: ns.findNode('ns=1;s=PLC')!,
      nodeId: `s=${name}`,
      browseName: name,
      dataType,
      minimumSamplingInterval: 50,
      value: { dataType: opcua.DataType[dataType], value },
    });
  for (let i = 0; i < states.length; i++) {
    stateVars.push(addStateVariable(opcua, server, i, states[i]!));
    idleVars.push(add(`Line${i + 1}.Idle`, 'Boolean', states[i] === 'Idle'));
    codeVars.push(add(`Line${i + 1}.StateCode`, 'Int32', stateCode(states[i]!)));
  }
  return { stateVars, idleVars, codeVars };
}

/** Line<N>.State (line is 0-based here), a String variable under the PLC object. */
function addStateVariable(opcua: Opcua, server: InstanceType<Opcua['OPCUAServer']>, line: number, state: string) {
  const ns = server.engine.addressSpace!.getOwnNamespace();
  const name = `Line${line + 1}.State`;
  return ns.addVariable({
    componentOf: ns.findNode('ns=1;s=PLC')!,
    nodeId: `s=${name}`,
    browseName: name,
    dataType: 'String',
    minimumSamplingInterval: 50,
    value: { dataType: opcua.DataType.String, value: state },
  });
}

/** PackML-like state numbers: 4 Idle, 6 Running (Execute), 0 anything else. */
function stateCode(state: string): number {
  return state === 'Idle' ? 4 : state === 'Running' ? 6 : 0;
}

/** Each line walks through the cycle, starting (line-1) * offset into it; `apply` sets a line's state (0-based). */
function runSchedule(
  schedule: readonly PlcPhase[],
  lineOffsetMs: number,
  states: readonly string[],
  apply: (line: number, state: string) => void,
  timers: Set<NodeJS.Timeout>,
): void {
  const cycleMs = schedule.reduce((s, p) => s + p.durationMs, 0);
  const started = Date.now();
  const runLine = (line: number) => {
    if (cycleMs === 0) return;
    const offset = (line * lineOffsetMs) % cycleMs;
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
  for (let i = 0; i < states.length; i++) runLine(i);
}
