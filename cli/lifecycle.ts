import { ErrorCodes } from '../shared/protocol/errors.js';
import type { Logger } from '../shared/util/logger.js';
import { isUsageError } from './option-checks.js';
import { ExitCodes } from './usage.js';

/** Start-up failures that a person fixes in a config file or on disk: exit code 3 (ExitCodes.CONFIG). */
const CONFIG_CODES: ReadonlySet<string> = new Set([ErrorCodes.CONFIG_READ, ErrorCodes.CONFIG_PARSE, ErrorCodes.CONFIG_INVALID, ErrorCodes.DATA]);

/** The exit code for an error that stops a command (the table in cli/usage.ts). */
export function exitCodeFor(err: unknown): number {
  if (isUsageError(err)) return ExitCodes.USAGE;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && CONFIG_CODES.has(code) ? ExitCodes.CONFIG : ExitCodes.FAILURE;
}

/**
 * Process lifecycle for the long-running commands: one orderly shutdown on SIGINT or SIGTERM
 * (systemd's stop), or when the parent that forked us (the demo) disappears; a second signal
 * forces exit. Fatal errors are logged as one line with their code before exiting non-zero.
 */
export function onShutdown(log: Logger, shutdown: (reason: string) => Promise<void>, timeoutMs = 15_000): void {
  let shuttingDown = false;
  const run = (reason: string, code: number) => {
    if (shuttingDown) {
      log.warn({ reason }, 'second stop request; exiting now');
      process.exit(code);
    }
    shuttingDown = true;
    log.info({ reason }, 'shutting down');
    const force = setTimeout(() => {
      log.error({ timeoutMs }, 'shutdown took too long; exiting');
      process.exit(code || 1);
    }, timeoutMs);
    force.unref();
    shutdown(reason)
      .catch((err: Error) => log.error({ err: err.message }, 'error during shutdown'))
      .finally(() => process.exit(code));
  };
  process.once('SIGINT', () => run('SIGINT', ExitCodes.INTERRUPTED));
  process.once('SIGTERM', () => run('SIGTERM', 0));
  // Forked by the demo with an IPC channel: when the parent dies, the channel closes; follow it.
  if (process.send) process.once('disconnect', () => run('parent process exited', 0));
}

/** Tell a parent that forked us (the demo, tests) that we are ready, and with what. */
export function notifyReady(info: Record<string, unknown>): void {
  process.send?.({ type: 'ready', ...info });
}

export function fatal(log: Logger, err: unknown): never {
  const e = err as { code?: string; message?: string };
  log.fatal({ code: e.code ?? 'FL_INTERNAL', err: e.message ?? String(err) }, 'fatal error');
  // Also on stderr in plain text: the first thing a person reads when a unit fails.
  process.stderr.write(`fedline: ${e.message ?? String(err)}\n`);
  process.exit(exitCodeFor(err));
}
