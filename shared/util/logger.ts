import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export interface LoggerOptions {
  /** pino level: trace, debug, info, warn, error, fatal, silent. Default: FEDLINE_LOG_LEVEL or `info`. */
  level?: string;
  /** Service name put on every line (`broker`, `aggregator`, `agent`). */
  name?: string;
  /** Where lines go. Default: stdout (journald picks it up under systemd). */
  destination?: DestinationStream;
}

/**
 * One JSON line per event, so journald, Loki or `jq` can read it. Modules take a child logger
 * carrying their context (`{module, round, agent}`) instead of formatting it into messages.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? process.env.FEDLINE_LOG_LEVEL ?? 'info';
  const base = options.name ? { service: options.name } : {};
  return pino({ level, base, timestamp: pino.stdTimeFunctions.isoTime }, options.destination ?? pino.destination(1));
}

/** A logger that drops everything: the default for library use and unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
