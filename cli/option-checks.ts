import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/** A command-line mistake: the message names the option, the command prints it with its usage. */
export const invalidOption = (message: string): FedlineError => new FedlineError(ErrorCodes.CONFIG_INVALID, message);

/** A whole-number option within [min, max]. */
export function intOption(name: string, value: string | undefined, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw invalidOption(`--${name} must be an integer from ${min} to ${max}, got "${value}"`);
  return n;
}
