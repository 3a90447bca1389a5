import { pino, type Bindings, type ChildLoggerOptions, type LogFn, type Logger, type DestinationStream } from 'pino';

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
 *
 * pino writes a child's bindings after its parent's, so `log.child({ module: 'a' }).child({ module: 'b' })`
 * or `log.warn({ module: 'data' }, ...)` on a logger bound to a module would put `module` on the line
 * twice (most JSON readers keep one of them, not always the same). Here a key is written once: the
 * innermost value wins (the child's over its parent's, the call's over the logger's).
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? process.env.FEDLINE_LOG_LEVEL ?? 'info';
  const base = options.name ? { service: options.name } : {};
  return uniqueKeys(pino({ level, base, timestamp: pino.stdTimeFunctions.isoTime, hooks: { logMethod } }, options.destination ?? pino.destination(1)));
}

/** A logger that drops everything: the default for library use and unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

function clashes(keys: readonly string[], bound: Bindings): string[] {
  return keys.filter((k) => Object.prototype.hasOwnProperty.call(bound, k));
}

/** Children whose bindings repeat a key of their parent's are rebuilt from the root with the merged bindings. */
function uniqueKeys(root: Logger): Logger {
  const plainChild = root.child as unknown as (this: Logger, bindings: Bindings, options?: ChildLoggerOptions) => Logger;
  const rootKeys = Object.keys(root.bindings());
  root.child = function child(this: Logger, bindings: Bindings, childOptions?: ChildLoggerOptions) {
    const bound = this.bindings();
    if (clashes(Object.keys(bindings), bound).length === 0) return plainChild.call(this, bindings, childOptions);
    const merged: Bindings = { ...bound, ...bindings };
    for (const k of rootKeys) if (!(k in bindings)) delete merged[k];
    const rebuilt = plainChild.call(root, merged, childOptions);
    rebuilt.level = childOptions?.level ?? this.level;
    return rebuilt;
  } as unknown as Logger['child'];
  return root;
}

/** A call whose merging object repeats a bound key logs through a child carrying the call's values. */
function logMethod(this: Logger, args: Parameters<LogFn>, method: LogFn, level: number): void {
  const first = args[0] as unknown;
  if (first !== null && typeof first === 'object' && !(first instanceof Error)) {
    const obj = first as Record<string, unknown>;
    const moved = clashes(Object.keys(obj), this.bindings());
    if (moved.length > 0) {
      const rest = { ...obj };
      for (const k of moved) delete rest[k];
      const child = this.child(Object.fromEntries(moved.map((k) => [k, obj[k]])));
      const label = this.levels.labels[level] as 'info';
      (child[label] as (...a: unknown[]) => void)(rest, ...args.slice(1));
      return;
    }
  }
  (method as (...a: unknown[]) => void).apply(this, args);
}
