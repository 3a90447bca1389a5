import { parseArgs } from 'node:util';
import { loadConfigFile } from '../shared/config/config-file.js';
import { createLogger } from '../shared/util/logger.js';
import { dashboardConfigSchema } from '../dashboard/dashboard-config.js';
import { fatal, notifyReady, onShutdown } from './lifecycle.js';
import { intOption } from './option-checks.js';

import { DASHBOARD_USAGE } from './usage.js';

export { DASHBOARD_USAGE };

/** `fedline dashboard --config FILE` */
export async function runDashboard(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { config: { type: 'string', short: 'c' }, port: { type: 'string' }, host: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(DASHBOARD_USAGE + '\n');
    return;
  }
  if (!values.config) {
    process.stderr.write(`fedline dashboard: --config FILE is required\n\n${DASHBOARD_USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  let log = createLogger({ name: 'dashboard' });
  try {
    const loaded = loadConfigFile(dashboardConfigSchema, values.config);
    const port = values.port !== undefined ? intOption('port', values.port, 0, 65535) : loaded.http.port;
    const config = { ...loaded, http: { host: values.host ?? loaded.http.host, port } };
    log = createLogger({ name: 'dashboard', ...(config.logLevel ? { level: config.logLevel } : {}) });
    const { startDashboard } = await import('../dashboard/main.js');
    const running = await startDashboard(config, log);
    onShutdown(log, () => running.close());
    process.stderr.write(`fedline dashboard: ${running.url}\n`);
    notifyReady({ url: running.url });
  } catch (err) {
    fatal(log, err);
  }
}
