import { z } from 'zod';
import { isValidId, topicMatches } from '../shared/protocol/topics.js';

/**
 * Who may do what on the broker: one access file (JSON) gives every MQTT user a role; the rules
 * of each role are written here once and used by both brokers: the embedded Aedes broker checks
 * them in its hooks (broker/auth-hooks.ts), and `fedline acl` renders them as Mosquitto's
 * acl_file (renderMosquittoAcl, below). Pure: no I/O.
 *
 * Roles (R = subscribe/receive, W = publish), under the federation's topic root:
 *   aggregator  W round, model/#, round/+/ack/+, events/+     R round/+/update/+, agent/+/status, cmd/+, round, model/# (its own retained state)
 *   agent (id)  W round/+/update/<id>, agent/<id>/status, events/{agent-state,alert,command-result}/<id>
 *               R round, model/#, round/+/ack/<id>, cmd/pause, cmd/resume
 *   mes         W cmd/+                                       R events/#, agent/+/status, model/latest, model/released, inspection/+/verdict
 *   inspector   W inspection/<id>/verdict                     R model/#, inspection/<id>/images/#      (the inspection service of agent <id>)
 *   camera      W inspection/<id>/images/#                    (a camera feeding agent <id>'s inspection service)
 *   dashboard   W cmd/+ (only with "operator": true)          R events/#, agent/+/status, model/latest, model/released   (`fedline dashboard`)
 * plus, per user, extra `read` / `write` topic filters (e.g. the MES line-state topic an agent's
 * trigger reads, which the MES user writes). Everything else is refused, `$SYS` included.
 *
 * Retained publishes only where the protocol keeps state (docs/topics.md, "retained"): the
 * aggregator's round and model/# (chunks, manifest), an agent's own status (also its last will),
 * and the user's extra `write` filters (the MES line state is best retained). A retained event,
 * ack, update or command is refused: a forged retained `model-published` event would otherwise be
 * served to every new subscriber. (Embedded broker only: Mosquitto's ACL cannot tell retained
 * publishes apart; see docs/how-it-works.md, "Broker hardening".)
 */

export const roles = ['aggregator', 'agent', 'mes', 'inspector', 'camera', 'dashboard'] as const;

/**
 * The event types an agent sends (docs/topics.md), each on `events/<type>/<agent>`: only these, so
 * that an agent cannot dress up as the aggregator's events (a forged `model-published`), on either broker.
 */
export const AGENT_EVENT_TYPES = ['agent-state', 'alert', 'command-result'] as const;
export type Role = (typeof roles)[number];

function validFilter(f: string): boolean {
  if (!f || f.length > 65535 || f.includes('\0')) return false;
  const levels = f.split('/');
  return levels.every((l, i) => (l === '#' ? i === levels.length - 1 : l === '+' || (!l.includes('+') && !l.includes('#'))));
}

const filter = z.string().refine(validFilter, { message: 'must be an MQTT topic filter ("+" and "#" only as whole levels, "#" last)' });
const id = z.string().refine(isValidId, { message: 'must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit' });

const accessUserSchema = z
  .strictObject({
    username: z
      .string()
      .min(1)
      .max(256)
      .refine((u) => !u.includes(':') && !/\s/.test(u), { message: 'must not contain ":" or spaces' }),
    role: z.enum(roles),
    /** agent, inspector, camera: the agent id these rights are about. Default: the user name (agent role). */
    agent: id.optional(),
    /** Extra topic filters this user may subscribe to / publish on. */
    read: z.array(filter).default([]),
    write: z.array(filter).default([]),
    /** dashboard: may send the MES commands (cmd/+) for its logged-in operators. Default false: a read-only view. */
    operator: z.boolean().optional(),
  })
  .refine((u) => u.role === 'aggregator' || u.role === 'mes' || u.role === 'agent' || u.role === 'dashboard' || u.agent !== undefined, {
    message: 'inspector and camera users need "agent": the agent id they serve',
    path: ['agent'],
  })
  .refine((u) => u.role !== 'agent' || isValidId(u.agent ?? u.username), {
    message: 'an agent user name is its agent id (1-64 characters of A-Z a-z 0-9 _ . -), or set "agent"',
    path: ['agent'],
  })
  .refine((u) => u.operator === undefined || u.role === 'dashboard', { message: 'only a dashboard user takes "operator"', path: ['operator'] });

export const accessFileSchema = z
  .strictObject({
    /** The federation's topic root, e.g. "fl/usb-inspection" (as `topicRoot` / fl/<federation> in the services' configs). */
    topicRoot: z.string().refine((r) => validFilter(r) && !r.includes('+') && !r.includes('#') && !r.startsWith('/') && !r.endsWith('/'), {
      message: 'must be a topic root without wildcards, e.g. "fl/usb-inspection"',
    }),
    users: z.array(accessUserSchema).min(1),
  })
  .refine((f) => new Set(f.users.map((u) => u.username)).size === f.users.length, { message: 'every username must appear once', path: ['users'] });

export type AccessUser = z.infer<typeof accessUserSchema>;
export type AccessFile = z.infer<typeof accessFileSchema>;

export interface UserRights {
  username: string;
  role: Role;
  /** Topic filters the user may subscribe to. */
  read: string[];
  /** Topic filters the user may publish on. */
  write: string[];
  /** Of those, the filters it may publish retained messages on. */
  retain: string[];
}

export function rightsFor(user: AccessUser, root: string): UserRights {
  const r = (s: string) => `${root}/${s}`;
  const a = user.agent ?? user.username;
  let read: string[] = [];
  let write: string[] = [];
  let retain: string[] = [];
  switch (user.role) {
    case 'aggregator':
      write = [r('round'), r('model/#'), r('round/+/ack/+'), r('events/+')];
      read = [r('round/+/update/+'), r('agent/+/status'), r('cmd/+'), r('round'), r('model/#')];
      retain = [r('round'), r('model/#')];
      break;
    case 'agent':
      write = [r(`round/+/update/${a}`), r(`agent/${a}/status`), ...AGENT_EVENT_TYPES.map((t) => r(`events/${t}/${a}`))];
      read = [r('round'), r('model/#'), r(`round/+/ack/${a}`), r('cmd/pause'), r('cmd/resume')];
      retain = [r(`agent/${a}/status`)];
      break;
    case 'mes':
      write = [r('cmd/+')];
      read = [r('events/#'), r('agent/+/status'), r('model/latest'), r('model/released'), r('inspection/+/verdict')];
      break;
    case 'inspector':
      write = [r(`inspection/${a}/verdict`)];
      read = [r('model/#'), r(`inspection/${a}/images/#`)];
      break;
    case 'camera':
      write = [r(`inspection/${a}/images/#`)];
      break;
    case 'dashboard':
      // What an MES reads of the federation's progress (no verdicts); commands only for an operator dashboard.
      write = user.operator ? [r('cmd/+')] : [];
      read = [r('events/#'), r('agent/+/status'), r('model/latest'), r('model/released')];
      break;
  }
  const uniq = (xs: string[]) => [...new Set(xs)];
  return {
    username: user.username,
    role: user.role,
    read: uniq([...read, ...user.read]),
    write: uniq([...write, ...user.write]),
    retain: uniq([...retain, ...user.write]),
  };
}

/**
 * True when every topic the subscription `sub` can match is also matched by `rule`: a
 * subscription is allowed only if it cannot reach anything the rule does not grant.
 */
export function filterCovers(rule: string, sub: string): boolean {
  const r = rule.split('/');
  const s = sub.split('/');
  for (let i = 0; i < r.length; i++) {
    if (r[i] === '#') return true;
    if (i >= s.length) return false;
    if (s[i] === '#') return false;
    if (r[i] === '+') continue;
    if (s[i] === '+' || r[i] !== s[i]) return false;
  }
  return r.length === s.length;
}

export function mayPublish(rights: UserRights, topic: string): boolean {
  if (topic.startsWith('$')) return false;
  return rights.write.some((w) => topicMatches(w, topic));
}

/** mayPublish, and for a retained message also a topic where the protocol keeps retained state. */
export function mayPublishRetained(rights: UserRights, topic: string): boolean {
  return mayPublish(rights, topic) && rights.retain.some((w) => topicMatches(w, topic));
}

export function maySubscribe(rights: UserRights, sub: string): boolean {
  if (!validFilter(sub)) return false;
  return rights.read.some((r) => filterCovers(r, sub));
}

export class AccessPolicy {
  private readonly byUser: Map<string, UserRights>;
  readonly topicRoot: string;

  constructor(file: AccessFile) {
    this.topicRoot = file.topicRoot;
    this.byUser = new Map(file.users.map((u) => [u.username, rightsFor(u, file.topicRoot)]));
  }

  rights(username: string): UserRights | null {
    return this.byUser.get(username) ?? null;
  }

  all(): UserRights[] {
    return [...this.byUser.values()];
  }
}

/** The rules as a Mosquitto acl_file: one `user` block per user, `topic read|write|readwrite <filter>` lines. */
export function renderMosquittoAcl(policy: AccessPolicy, source: string): string {
  const lines = [
    `# Mosquitto ACL for fedline, generated by \`fedline acl --access ${source}\` from broker/access.ts's roles.`,
    '# Do not edit by hand: change the access file and generate it again, so both brokers keep the same rules.',
    '# No `pattern` lines and no anonymous section: a user not listed here may do nothing.',
    '',
  ];
  for (const u of policy.all()) {
    lines.push(`# ${u.username}: ${u.role}`, `user ${u.username}`);
    const filters = [...new Set([...u.read, ...u.write])];
    for (const f of filters) {
      const access = u.read.includes(f) && u.write.includes(f) ? 'readwrite' : u.read.includes(f) ? 'read' : 'write';
      lines.push(`topic ${access} ${f}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}
