import { z } from 'zod';
import { mqttConfigSchema } from '../shared/config/service-config.js';
import { isValidId } from '../shared/protocol/topics.js';

const id = z.string().refine(isValidId, { message: 'must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit' });

/**
 * `fedline dashboard --config FILE`: which federation to follow (with the dashboard's own MQTT
 * login, role `dashboard` in the access file), where to serve the page, and who may act on it.
 */
export const dashboardConfigSchema = z.strictObject({
  federation: id,
  /** Topic root; default fl/<federation>. */
  topicRoot: z.string().min(1).optional(),
  mqtt: mqttConfigSchema,
  http: z
    .strictObject({
      /** Loopback by default: put a reverse proxy with TLS in front to reach it from the plant network. */
      host: z.string().min(1).default('127.0.0.1'),
      /** 0 picks a free port (printed at start). */
      port: z.number().int().min(0).max(65535).default(8080),
    })
    .default({ host: '127.0.0.1', port: 8080 }),
  /**
   * Operators who may log in and send commands: a password file in the broker's format (`fedline
   * passwd --file FILE --user NAME`). Absent: the page is read-only. The dashboard's MQTT user
   * needs `"operator": true` in the access file for the commands to reach the aggregator.
   */
  operators: z.strictObject({ passwordFile: z.string().min(1) }).optional(),
  /** Minutes a login lasts without a request. Default 480 (a shift). */
  sessionIdleMinutes: z
    .number()
    .int()
    .positive()
    .max(7 * 24 * 60)
    .default(480),
  /** The defect class (its index in the model's classes, and a name for the charts): its recall is the "defect recall" chart. */
  defectClass: z.strictObject({ index: z.number().int().nonnegative(), name: z.string().min(1) }).default({ index: 1, name: 'NOT_OKAY' }),
  logLevel: z.string().optional(),
});
export type DashboardConfig = z.infer<typeof dashboardConfigSchema>;
