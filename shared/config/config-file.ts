import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { z } from 'zod';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';

/**
 * Loading a service's configuration file: read, validate against its zod schema (unknown keys
 * refused), resolve relative paths against the file's folder, freeze. Every error names the file
 * and the key. The schemas are in service-config.ts, broker-config.ts, plant-config.ts,
 * inspect-config.ts and trigger-config.ts.
 */

type Frozen<T> = T extends (infer U)[] ? readonly Frozen<U>[] : T extends object ? { readonly [K in keyof T]: Frozen<T[K]> } : T;

export function deepFreeze<T>(value: T): Frozen<T> {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value as Frozen<T>;
}

function formatConfigIssues(error: z.ZodError, file: string): string {
  return error.issues
    .map((issue) => {
      const where = issue.path.length ? issue.path.join('.') : '(top level)';
      if (issue.code === 'unrecognized_keys') {
        const keys = (issue as { keys: string[] }).keys;
        return `  ${file}: unknown key${keys.length > 1 ? 's' : ''} ${keys.map((k) => `"${issue.path.length ? `${where}.` : ''}${k}"`).join(', ')}`;
      }
      return `  ${file}: "${where}": ${issue.message}`;
    })
    .join('\n');
}

/** Validate an already-parsed config object. `source` names it in errors. */
export function parseConfig<S extends z.ZodType>(schema: S, raw: unknown, source: string): z.infer<S> {
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `invalid configuration in ${source}:\n${formatConfigIssues(parsed.error, source)}`, { file: source });
  }
  return parsed.data;
}

/** Keys whose values are file system paths, resolved against the config file's folder. */
const PATH_KEYS = new Set([
  'stateDir',
  'dir',
  'initFrom',
  'passwordFile',
  'caFile',
  'certFile',
  'keyFile',
  'pkiDir',
  'accessFile',
  'archiveDir',
  'signingKeyFile',
  'modelPublicKeyFile',
]);

function resolvePaths(value: unknown, base: string): unknown {
  if (Array.isArray(value)) return value.map((v) => resolvePaths(v, base));
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, PATH_KEYS.has(k) && typeof v === 'string' && !isAbsolute(v) ? resolve(base, v) : resolvePaths(v, base)]),
    );
  }
  return value;
}

/** Read, validate, resolve paths, freeze. Every failure names the file. */
export function loadConfigFile<S extends z.ZodType>(schema: S, file: string): z.infer<S> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FedlineError(ErrorCodes.CONFIG_READ, `cannot read configuration file ${file}: ${(err as Error).message}`, { file });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new FedlineError(ErrorCodes.CONFIG_PARSE, `configuration file ${file} is not valid JSON: ${(err as Error).message}`, { file });
  }
  const config = parseConfig(schema, raw, file);
  // Frozen at run time: a service that tries to change its configuration fails loudly.
  return deepFreeze(resolvePaths(config, dirname(resolve(file))) as z.infer<S>) as z.infer<S>;
}
