import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/** A command-line mistake (exit code 2): the message names the option, the command prints it with its usage. */
export class UsageError extends FedlineError {
  constructor(message: string) {
    super(ErrorCodes.CONFIG_INVALID, message, { usage: true });
    this.name = 'UsageError';
  }
}

/** A command-line mistake: the message names the option, the command prints it with its usage. */
export const invalidOption = (message: string): FedlineError => new UsageError(message);

/** True for a command-line mistake: ours, or node:util parseArgs's (unknown option, missing value...). */
export function isUsageError(err: unknown): boolean {
  if (err instanceof UsageError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}

/** A whole-number option within [min, max]. */
export function intOption(name: string, value: string | undefined, min: number, max: number): number {
  const n = Number(value);
  if (value === undefined || value.trim() === '' || !Number.isInteger(n) || n < min || n > max)
    throw invalidOption(`--${name} must be an integer from ${min} to ${max}, got "${value}"`);
  return n;
}
