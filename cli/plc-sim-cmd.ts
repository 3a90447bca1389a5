import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { freeTcpPort } from '../shared/util/free-port.js';
import { createLogger } from '../shared/util/logger.js';
import { parsePlcSchedule, startPlcSimulator, type LineStateChange } from '../demo/plc-simulator.js';
import { fatal, notifyReady, onShutdown } from './lifecycle.js';
import { intOption as int, invalidOption, isUsageError } from './option-checks.js';
import { PLC_SIM_USAGE } from './usage.js';

export { PLC_SIM_USAGE } from './usage.js';

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
    const offset = Number(values.offset);
    if (!(offset >= 0)) throw invalidOption(`--offset must be a number of seconds >= 0, got "${values.offset}"`);
    const users = (values.user ?? []).map((u) => {
      const i = u.indexOf(':');
      if (i < 1) throw invalidOption(`--user must be NAME:PASSWORD, got "${u}"`);
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
    if (isUsageError(err)) throw err; // cli/main.ts prints it with the usage (exit code 2)
    fatal(log, err);
  }
}
