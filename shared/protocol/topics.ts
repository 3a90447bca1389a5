import { ErrorCodes, FedlineError } from './errors.js';

/**
 * Topic builders and parsers. Every topic fedline uses is built here and nowhere else, so the
 * table in docs/protocol.md and the code cannot drift apart.
 *
 * All topics live under a root, default `fl/<federation>`. Identifiers that become topic levels
 * (federation, agent ids) must not contain the MQTT wildcard or separator characters
 * (MQTT 3.1.1 §4.7.1: `+`, `#` and `/` are reserved), and `$` may not start a level we publish.
 */

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export function isValidId(id: string): boolean {
  return ID_PATTERN.test(id);
}

export function defaultRoot(federation: string): string {
  return `fl/${federation}`;
}

export interface Topics {
  readonly root: string;
  round(): string;
  modelChunk(version: number, seq: number): string;
  modelChunks(version: number): string;
  modelLatest(): string;
  /** SCAFFOLD's server variate c that goes with model `version`: retained chunks under the model's level (same access rules). */
  controlChunk(version: number, seq: number): string;
  controlChunks(version: number): string;
  /** The released version's manifest (retained, JSON): what the production lines run. */
  modelReleased(): string;
  update(round: number, agent: string): string;
  updatesAll(): string;
  ack(round: number, agent: string): string;
  acksFor(agent: string): string;
  status(agent: string): string;
  statusAll(): string;
  /** `<root>/events/<type>`; an agent's own events: `<root>/events/<type>/<agent>`. */
  event(type: string, agent?: string): string;
  eventsAll(): string;
  command(verb: string): string;
  commandsAll(): string;
  parseUpdate(topic: string): { round: number; agent: string } | null;
  parseAck(topic: string): { round: number; agent: string } | null;
  parseModelChunk(topic: string): { version: number; seq: number } | null;
  parseControlChunk(topic: string): { version: number; seq: number } | null;
  parseStatus(topic: string): { agent: string } | null;
  parseCommand(topic: string): { verb: string } | null;
}

/** A chunk's version and sequence number from their topic levels (model and control chunks). */
function versionChunk(versionLevel: string | undefined, seqLevel: string | undefined): { version: number; seq: number } | null {
  const version = parseNonNegativeInt(versionLevel);
  const seq = parseNonNegativeInt(seqLevel);
  if (version === null || seq === null) return null;
  return { version, seq };
}

function parseNonNegativeInt(text: string | undefined): number | null {
  if (text === undefined || !/^(0|[1-9][0-9]{0,14})$/.test(text)) return null;
  return Number(text);
}

export function createTopics(root: string): Topics {
  if (!root || root.includes('+') || root.includes('#') || root.startsWith('/') || root.endsWith('/')) {
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `invalid topic root "${root}": it must be non-empty, without wildcards or leading/trailing "/"`, {
      root,
    });
  }
  const depth = root.split('/').length;
  const tail = (topic: string): string[] | null => {
    if (!topic.startsWith(root + '/')) return null;
    return topic.split('/').slice(depth);
  };
  return Object.freeze({
    root,
    round: () => `${root}/round`,
    modelChunk: (version: number, seq: number) => `${root}/model/${version}/${seq}`,
    modelChunks: (version: number) => `${root}/model/${version}/+`,
    modelLatest: () => `${root}/model/latest`,
    controlChunk: (version: number, seq: number) => `${root}/model/${version}/control/${seq}`,
    controlChunks: (version: number) => `${root}/model/${version}/control/+`,
    modelReleased: () => `${root}/model/released`,
    update: (round: number, agent: string) => `${root}/round/${round}/update/${agent}`,
    updatesAll: () => `${root}/round/+/update/+`,
    ack: (round: number, agent: string) => `${root}/round/${round}/ack/${agent}`,
    acksFor: (agent: string) => `${root}/round/+/ack/${agent}`,
    status: (agent: string) => `${root}/agent/${agent}/status`,
    statusAll: () => `${root}/agent/+/status`,
    event: (type: string, agent?: string) => (agent === undefined ? `${root}/events/${type}` : `${root}/events/${type}/${agent}`),
    eventsAll: () => `${root}/events/#`,
    command: (verb: string) => `${root}/cmd/${verb}`,
    commandsAll: () => `${root}/cmd/+`,
    parseUpdate(topic: string) {
      const t = tail(topic);
      if (!t || t.length !== 4 || t[0] !== 'round' || t[2] !== 'update') return null;
      const round = parseNonNegativeInt(t[1]);
      if (round === null || !isValidId(t[3]!)) return null;
      return { round, agent: t[3]! };
    },
    parseAck(topic: string) {
      const t = tail(topic);
      if (!t || t.length !== 4 || t[0] !== 'round' || t[2] !== 'ack') return null;
      const round = parseNonNegativeInt(t[1]);
      if (round === null || !isValidId(t[3]!)) return null;
      return { round, agent: t[3]! };
    },
    parseModelChunk(topic: string) {
      const t = tail(topic);
      return t && t.length === 3 && t[0] === 'model' ? versionChunk(t[1], t[2]) : null;
    },
    parseControlChunk(topic: string) {
      const t = tail(topic);
      return t && t.length === 4 && t[0] === 'model' && t[2] === 'control' ? versionChunk(t[1], t[3]) : null;
    },
    parseStatus(topic: string) {
      const t = tail(topic);
      if (!t || t.length !== 3 || t[0] !== 'agent' || t[2] !== 'status' || !isValidId(t[1]!)) return null;
      return { agent: t[1]! };
    },
    parseCommand(topic: string) {
      const t = tail(topic);
      if (!t || t.length !== 2 || t[0] !== 'cmd' || !isValidId(t[1]!)) return null;
      return { verb: t[1]! };
    },
  });
}

/**
 * MQTT topic filter matching (MQTT 3.1.1 §4.7): `+` matches one level, `#` the rest (including
 * the parent level), and a filter starting with a wildcard does not match a topic starting with
 * `$` (§4.7.2). The one matcher of the tree: the broker's access rules, the transports' dispatch
 * tables and the in-memory hub all use it, so they cannot disagree.
 */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === '#') return true;
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
}
