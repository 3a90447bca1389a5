import type { Logger } from '../../shared/util/logger.js';
import { ErrorCodes, FedlineError } from '../../shared/protocol/errors.js';

/** The node-opcua namespace (loaded on first use: it takes ~1 s to import, and most agents may not need it). */
export type Opcua = typeof import('node-opcua');

let loading: Promise<Opcua> | null = null;

/**
 * Load node-opcua with its console output routed into our JSON log (debug level): node-opcua
 * prints warnings and errors straight to the console, some at import time, which would break
 * the one-JSON-object-per-line log that journald and log shippers read. Its loggers are
 * process-wide, so the first caller's logger receives them.
 */
export function loadOpcua(log: Logger): Promise<Opcua> {
  loading ??= (async () => {
    const debug = await import('node-opcua-debug');
    const route =
      (level: 'debug' | 'warn') =>
      (...args: unknown[]) => {
        const text = args
          .map((a) => (typeof a === 'string' ? a : a instanceof Error ? a.message : ''))
          .filter(Boolean)
          .join(' ')
          .trim();
        if (text) log[level]({ module: 'node-opcua' }, text);
      };
    // node-opcua's "warnings" are mostly advice (node flags, sampling intervals): debug level.
    debug.setWarningLogger(route('debug'));
    debug.setErrorLogger(route('debug'));
    debug.setDebugLogger(() => undefined);
    debug.setTraceLogger(() => undefined);
    const mod = (await import('node-opcua')) as Opcua & { default?: Opcua };
    return mod.OPCUAClient ? mod : mod.default!;
  })();
  return loading;
}

/** PEM text of a certificate -> DER bytes (what OPC UA puts on the wire). */
export function pemToDer(pem: string, what: string): Buffer {
  const m = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/.exec(pem);
  if (!m) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `${what}: no PEM certificate (-----BEGIN CERTIFICATE-----) found`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}
