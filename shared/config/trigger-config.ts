import { z } from 'zod';

/**
 * Configuration of an edge agent's training window (its "trigger"): which conditions must hold
 * for the agent to use the box's GPU. A trigger is a tree: leaves are sources (an OPC UA
 * variable, an MQTT topic published by the MES, schedule windows, operator commands, `always`),
 * inner nodes combine them with `all` or `any`. Validated once at start-up with the rest of the
 * agent config (shared/config/service-config.ts); unknown keys are refused.
 */

const scalar = z.union([z.string(), z.number(), z.boolean()]);

/**
 * When a value counts as "training allowed". Exactly one of:
 *   {"equals": "Idle"}               the value equals this (strings, numbers, booleans)
 *   {"notEquals": "Running"}         the value differs from this
 *   {"in": ["Idle", "Maintenance"]}  the value is one of these
 *   {"notIn": ["Running"]}           the value is none of these
 *   {"range": {"min": 0, "max": 5}}  a number with min <= value <= max (either bound optional)
 */
export const conditionSchema = z
  .strictObject({
    equals: scalar.optional(),
    notEquals: scalar.optional(),
    in: z.array(scalar).min(1).optional(),
    notIn: z.array(scalar).min(1).optional(),
    range: z
      .strictObject({ min: z.number().optional(), max: z.number().optional() })
      .refine((r) => r.min !== undefined || r.max !== undefined, { message: 'range needs min, max or both' })
      .refine((r) => r.min === undefined || r.max === undefined || r.min <= r.max, { message: 'range.min must not exceed range.max' })
      .optional(),
  })
  .refine((c) => Object.values(c).filter((v) => v !== undefined).length === 1, {
    message: 'give exactly one of equals, notEquals, in, notIn, range',
  });
export type Condition = z.infer<typeof conditionSchema>;

const WINDOW_PATTERN = /^([01][0-9]|2[0-3]):([0-5][0-9])-(([01][0-9]|2[0-3]):([0-5][0-9])|24:00)$/;
export const weekdays = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
export type Weekday = (typeof weekdays)[number];

function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

const windowSpec = z
  .string()
  .regex(WINDOW_PATTERN, 'a window is "HH:MM-HH:MM" in 24 h local time, e.g. "22:00-06:00" (wraps past midnight) or "00:00-24:00"')
  .refine((w) => w.slice(0, 5) !== w.slice(6), { message: 'a window must not start and end at the same time (use "00:00-24:00" for a whole day)' });

const alwaysSourceSchema = z.strictObject({ type: z.literal('always') });

const scheduleSourceSchema = z.strictObject({
  type: z.literal('schedule'),
  /** Local-time windows, e.g. ["22:00-06:00", "12:00-12:45"]. A window ending before it starts runs past midnight. */
  windows: z.array(windowSpec).min(1),
  /** IANA time zone of the windows, e.g. "Europe/Berlin". Default: the system's time zone. */
  timeZone: z.string().refine(isTimeZone, { message: 'must be an IANA time zone such as "Europe/Berlin" or "UTC"' }).optional(),
  /** Days on which a window starts (a 22:00-06:00 window on "fri" ends Saturday 06:00). Default: every day. */
  days: z.array(z.enum(weekdays)).min(1).optional(),
});

const manualSourceSchema = z.strictObject({
  type: z.literal('manual'),
  /**
   * State before the first command: open (train until an operator sends `<root>/cmd/pause`) or
   * closed (wait for `<root>/cmd/resume`). The last command received is kept in the agent's
   * state directory and survives restarts. Default open.
   */
  initially: z.enum(['open', 'closed']).default('open'),
});

const mqttSourceSchema = z.strictObject({
  type: z.literal('mqtt'),
  /** Topic the MES publishes the line state on (ideally retained), e.g. "mes/line1/state". No wildcards. */
  topic: z
    .string()
    .min(1)
    .refine((t) => !t.includes('+') && !t.includes('#'), { message: 'must be a topic without wildcards' }),
  /**
   * Where the value sits in a JSON payload: "$.line.state", "state", "lines[0].mode". Absent: the
   * whole payload (a JSON scalar, or the raw text when it is not JSON).
   */
  path: z.string().min(1).optional(),
  when: conditionSchema,
  /** Treat the state as unknown (no training) when nothing arrived for this long, ms. Default: never stale. */
  staleAfterMs: z.number().int().positive().optional(),
});

const opcuaSecurityModes = ['None', 'Sign', 'SignAndEncrypt'] as const;
const opcuaSecurityPolicies = ['None', 'Basic256Sha256', 'Aes128_Sha256_RsaOaep', 'Aes256_Sha256_RsaPss'] as const;

export const opcuaSourceSchema = z
  .strictObject({
    type: z.literal('opcua'),
    /** opc.tcp://host:port[/path] of the PLC or OPC UA gateway. */
    endpoint: z.string().regex(/^opc\.tcp:\/\/[^\s]+$/, 'must look like opc.tcp://host:port'),
    /** Node id of the line-state variable, e.g. "ns=1;s=Line1.State" or "ns=2;i=1001". */
    nodeId: z.string().regex(/^(ns=\d+;)?[isgb]=.+$/, 'must be an OPC UA node id such as "ns=1;s=Line1.State"'),
    when: conditionSchema,
    securityMode: z.enum(opcuaSecurityModes).default('None'),
    securityPolicy: z.enum(opcuaSecurityPolicies).default('None'),
    /** User name identity (password inline or, better, in a file); absent: anonymous or certificate. */
    user: z
      .strictObject({
        username: z.string().min(1),
        password: z.string().optional(),
        passwordFile: z.string().min(1).optional(),
      })
      .refine((u) => (u.password === undefined) !== (u.passwordFile === undefined), { message: 'give exactly one of password and passwordFile' })
      .optional(),
    /** X.509 user identity (PEM files); the key must not be encrypted. */
    userCertificate: z.strictObject({ certFile: z.string().min(1), keyFile: z.string().min(1) }).optional(),
    /**
     * The client's certificate store (own certificate and key, trusted and rejected server
     * certificates). Default: <stateDir>/opcua-pki (node-opcua's own default is under $HOME,
     * which ProtectHome= hides from a systemd service).
     */
    pkiDir: z.string().min(1).optional(),
    /**
     * Trust a server certificate not yet in <pkiDir>/trusted (it is stored there on first use).
     * Default true for securityMode None (nothing is verified anyway), false otherwise: copy the
     * PLC's certificate into <pkiDir>/trusted/certs, or move it there from rejected/ after a first try.
     */
    acceptUnknownServerCertificate: z.boolean().optional(),
    /** Sampling and publishing interval of the subscription, ms. Default 250. */
    samplingIntervalMs: z.number().int().positive().default(250),
    /** Reconnect back-off after a failure: first delay, cap, ms. Defaults 500 and 30000. */
    retryInitialDelayMs: z.number().int().positive().default(500),
    retryMaxDelayMs: z.number().int().positive().default(30_000),
    /** Give up one connection attempt after this long, ms. Default 10000. */
    connectTimeoutMs: z.number().int().positive().default(10_000),
  })
  .refine((s) => !(s.user && s.userCertificate), { message: 'give either user or userCertificate, not both' })
  .refine((s) => (s.securityMode === 'None') === (s.securityPolicy === 'None'), {
    message: 'securityMode None goes with securityPolicy None, and Sign/SignAndEncrypt with a real policy such as Basic256Sha256',
  });

export type AlwaysSource = z.infer<typeof alwaysSourceSchema>;
export type ScheduleSource = z.infer<typeof scheduleSourceSchema>;
export type ManualSource = z.infer<typeof manualSourceSchema>;
export type MqttSource = z.infer<typeof mqttSourceSchema>;
export type OpcuaSource = z.infer<typeof opcuaSourceSchema>;

export type TriggerSpec =
  AlwaysSource | ScheduleSource | ManualSource | MqttSource | OpcuaSource | { type: 'all'; sources: TriggerSpec[] } | { type: 'any'; sources: TriggerSpec[] };

/** The whole trigger tree. `{"type": "always"}` (the default) trains as soon as a round asks. */
export const triggerSchema: z.ZodType<TriggerSpec> = z.lazy(() =>
  z.discriminatedUnion('type', [
    alwaysSourceSchema,
    scheduleSourceSchema,
    manualSourceSchema,
    mqttSourceSchema,
    opcuaSourceSchema,
    z.strictObject({ type: z.literal('all'), sources: z.array(triggerSchema).min(1) }),
    z.strictObject({ type: z.literal('any'), sources: z.array(triggerSchema).min(1) }),
  ]),
) as z.ZodType<TriggerSpec>;

/** Leaves of a trigger tree, depth first. */
export function triggerLeaves(spec: TriggerSpec): Exclude<TriggerSpec, { type: 'all' | 'any' }>[] {
  if (spec.type === 'all' || spec.type === 'any') return spec.sources.flatMap(triggerLeaves);
  return [spec];
}
