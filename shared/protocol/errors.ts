/**
 * The catalogue of fedline errors. Every error that crosses a module boundary carries a stable
 * `code` (as Fastify's errors do) so that logs, counters, acks and MES events can name the cause
 * without parsing messages. Codes are part of the protocol: never rename one, add new ones.
 */

export const ErrorCodes = {
  // configuration (start-up; fatal)
  CONFIG_READ: 'FL_CONFIG_READ',
  CONFIG_PARSE: 'FL_CONFIG_PARSE',
  CONFIG_INVALID: 'FL_CONFIG_INVALID',
  // message decoding and validation (per message; logged, counted, dropped)
  MSG_DECODE: 'FL_MSG_DECODE',
  MSG_VERSION: 'FL_MSG_VERSION',
  MSG_SCHEMA: 'FL_MSG_SCHEMA',
  MSG_TOPIC: 'FL_MSG_TOPIC',
  MSG_OVERSIZE: 'FL_MSG_OVERSIZE',
  // chunk transport
  CHUNK_CRC: 'FL_CHUNK_CRC',
  CHUNK_MISMATCH: 'FL_CHUNK_MISMATCH',
  BUNDLE_SHA: 'FL_BUNDLE_SHA',
  BUNDLE_FORMAT: 'FL_BUNDLE_FORMAT',
  // update semantics
  UNKNOWN_AGENT: 'FL_UNKNOWN_AGENT',
  NOT_SELECTED: 'FL_NOT_SELECTED',
  ROUND_CLOSED: 'FL_ROUND_CLOSED',
  WRONG_BASE: 'FL_WRONG_BASE',
  UPDATE_MANIFEST: 'FL_UPDATE_MANIFEST',
  UPDATE_NONFINITE: 'FL_UPDATE_NONFINITE',
  UPDATE_SAMPLES: 'FL_UPDATE_SAMPLES',
  UPDATE_NORM: 'FL_UPDATE_NORM',
  DUPLICATE_UPDATE: 'FL_DUPLICATE_UPDATE',
  // services
  MODEL_STORE: 'FL_MODEL_STORE',
  MODEL_INCOMPATIBLE: 'FL_MODEL_INCOMPATIBLE',
  MODEL_SIGNATURE: 'FL_MODEL_SIGNATURE',
  DATA: 'FL_DATA',
  TRANSPORT: 'FL_TRANSPORT',
  TIMEOUT: 'FL_TIMEOUT',
  ABORTED: 'FL_ABORTED',
  /** A local file (update spool or journal, a model being downloaded) is shorter than written or refused a write. */
  STORAGE: 'FL_STORAGE',
  /** The machine cannot run fedline (a big-endian CPU). */
  PLATFORM: 'FL_PLATFORM',
  /** A plant round made no aggregate or no evaluation (too few lines, every update refused): the plant sends nothing upstream for that round. */
  PLANT_ROUND_EMPTY: 'FL_PLANT_ROUND_EMPTY',
  // training windows (edge-agent/triggers)
  WINDOW_MISSED: 'FL_WINDOW_MISSED',
  OPCUA_UNREACHABLE: 'FL_OPCUA_UNREACHABLE',
  OPCUA_NODE_MISSING: 'FL_OPCUA_NODE_MISSING',
  OPCUA_SESSION_LOST: 'FL_OPCUA_SESSION_LOST',
  OPCUA_SECURITY: 'FL_OPCUA_SECURITY',
  /** The line-state variable reports a status other than Good (a sensor or PLC fault). */
  OPCUA_BAD_STATUS: 'FL_OPCUA_BAD_STATUS',
  /** The line-state variable's type can never satisfy the trigger's `when` (an Int32 against `equals: "Idle"`). */
  OPCUA_VALUE_TYPE: 'FL_OPCUA_VALUE_TYPE',
  // MES commands and broker security
  COMMAND: 'FL_COMMAND',
  AUTH: 'FL_AUTH',
  // local compute and child processes
  BACKEND: 'FL_BACKEND',
  PROCESS_EXIT: 'FL_PROCESS_EXIT',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class FedlineError extends Error {
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FedlineError';
    this.code = code;
    this.details = details;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, ...this.details };
  }
}

export function isFedlineError(err: unknown, code?: ErrorCode): err is FedlineError {
  return err instanceof FedlineError && (code === undefined || err.code === code);
}

/** Reduce anything thrown to a message that is safe to log or put in an ack. */
export function describeError(err: unknown): { code: string; message: string } {
  if (err instanceof FedlineError) return { code: err.code, message: err.message };
  if (err instanceof Error) return { code: (err as { code?: string }).code ?? 'FL_INTERNAL', message: err.message };
  return { code: 'FL_INTERNAL', message: String(err) };
}
