import { WireFloat } from './strict-msgpack.js';

/**
 * The wire types of every message as docs/protocol.md states them, for test/wire-strict: a value
 * decoded with strictUnpack(..., { tagFloats: true }) (msgpack) or JSON.parse (JSON) is checked
 * field by field: integers where the docs say int, floats (msgpack float64/float32) where they say
 * float, nil only where a field is nullable, optional fields only where the docs say optional, and
 * no field the docs do not name.
 */
export type WireType =
  | { t: 'int' | 'float' | 'str' | 'bool' | 'bin' | 'any' }
  | { t: 'nil'; of: WireType }
  | { t: 'opt'; of: WireType }
  | { t: 'arr'; of: WireType }
  | { t: 'rec'; of: WireType }
  | { t: 'oneOf'; of: WireType[] }
  | { t: 'map'; fields: Record<string, WireType> };

export const int: WireType = { t: 'int' };
export const float: WireType = { t: 'float' };
export const str: WireType = { t: 'str' };
export const bool: WireType = { t: 'bool' };
export const bin: WireType = { t: 'bin' };
export const any: WireType = { t: 'any' };
export const nil = (of: WireType): WireType => ({ t: 'nil', of });
export const opt = (of: WireType): WireType => ({ t: 'opt', of });
export const arr = (of: WireType): WireType => ({ t: 'arr', of });
export const rec = (of: WireType): WireType => ({ t: 'rec', of });
export const oneOf = (...of: WireType[]): WireType => ({ t: 'oneOf', of });
export const map = (fields: Record<string, WireType>): WireType => ({ t: 'map', fields });

/**
 * Where the value breaks the type, one line per problem (empty: it conforms). `json`: the value
 * came from JSON, where a whole float may be written `1`: a float field then accepts any number.
 */
export function wireProblems(value: unknown, type: WireType, json = false, path = '$'): string[] {
  const got = describe(value);
  switch (type.t) {
    case 'any':
      return [];
    case 'int':
      return typeof value === 'number' && Number.isSafeInteger(value) ? [] : [`${path}: want int, got ${got}`];
    case 'float':
      return value instanceof WireFloat && value.bits === 64 ? [] : json && typeof value === 'number' ? [] : [`${path}: want float64, got ${got}`];
    case 'str':
      return typeof value === 'string' ? [] : [`${path}: want str, got ${got}`];
    case 'bool':
      return typeof value === 'boolean' ? [] : [`${path}: want bool, got ${got}`];
    case 'bin':
      return value instanceof Uint8Array ? [] : [`${path}: want bin, got ${got}`];
    case 'nil':
      return value === null ? [] : wireProblems(value, type.of, json, path);
    case 'opt':
      return wireProblems(value, type.of, json, path); // presence is checked by the map
    case 'arr':
      return Array.isArray(value) ? value.flatMap((v, i) => wireProblems(v, type.of, json, `${path}[${i}]`)) : [`${path}: want array, got ${got}`];
    case 'rec':
      return isMap(value) ? Object.entries(value).flatMap(([k, v]) => wireProblems(v, type.of, json, `${path}.${k}`)) : [`${path}: want map, got ${got}`];
    case 'oneOf': {
      const each = type.of.map((o) => wireProblems(value, o, json, path));
      return each.some((p) => p.length === 0) ? [] : [`${path}: none of the alternatives fit: ${each.map((p) => p.join(', ')).join(' | ')}`];
    }
    case 'map': {
      if (!isMap(value)) return [`${path}: want map, got ${got}`];
      const problems: string[] = [];
      for (const k of Object.keys(value)) if (!(k in type.fields)) problems.push(`${path}.${k}: not documented`);
      for (const [k, f] of Object.entries(type.fields)) {
        if (!(k in value)) {
          if (f.t !== 'opt') problems.push(`${path}.${k}: missing`);
        } else problems.push(...wireProblems(value[k], f, json, `${path}.${k}`));
      }
      return problems;
    }
  }
}

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) && !(v instanceof WireFloat);
}

function describe(v: unknown): string {
  if (v instanceof WireFloat) return `float${v.bits} ${v.value}`;
  if (v === null) return 'nil';
  if (typeof v === 'number') return Number.isInteger(v) ? `int ${v}` : `number ${v}`;
  if (v instanceof Uint8Array) return 'bin';
  if (Array.isArray(v)) return 'array';
  return typeof v === 'string' ? `str ${JSON.stringify(v).slice(0, 40)}` : typeof v;
}

// ---- the messages (docs/protocol.md; topics.md for the JSON ones)

const v = int;
export const evalMetrics = map({
  samples: int,
  loss: nil(float),
  accuracy: float,
  balancedAccuracy: float,
  confusion: arr(arr(int)),
  precision: arr(nil(float)),
  recall: arr(nil(float)),
});

export const roundAnnouncement = map({
  v,
  type: str,
  federation: str,
  runId: str,
  round: int,
  state: str,
  kind: str,
  base: map({ version: int, sha256: str, bytes: int, chunks: int, chunkBytes: int, signature: nil(str) }),
  task: map({
    epochs: int,
    localSteps: opt(int),
    batchSize: int,
    learningRate: float,
    optimizer: str,
    optimizerState: opt(str),
    classWeighting: str,
    sampling: opt(str),
    proxMu: opt(float),
    federated: oneOf(str, arr(str)),
  }),
  classes: arr(str),
  selected: arr(str),
  minClients: int,
  deadlineAt: int,
  chunkBytes: int,
  encoding: str,
  delta: opt(bool),
  windowChunks: opt(int),
  issuedAt: int,
});

const chunkFields = { seq: int, total: int, bundleBytes: int, chunkBytes: int, crc32: int, data: bin };
export const modelChunk = map({ v, type: str, version: int, sha256: str, ...chunkFields });
export const updateChunk = map({ v, type: str, round: int, agent: str, upload: str, ...chunkFields });
export const updateDone = map({ v, type: str, round: int, agent: str, upload: str, total: int, bundleBytes: int, sha256: str, query: opt(int) });
export const evalReport = map({ v, type: str, round: int, agent: str, baseVersion: int, metrics: evalMetrics, downloadedBytes: int });
export const bnStats = map({
  v,
  type: str,
  round: int,
  agent: str,
  baseVersion: int,
  layers: arr(map({ layer: str, count: int, mean: arr(float), m2: arr(float) })),
  downloadedBytes: int,
});
export const ack = map({
  v,
  type: str,
  round: int,
  agent: str,
  status: str,
  upload: nil(str),
  sha256: nil(str),
  code: nil(str),
  reason: nil(str),
  missing: arr(int),
  stored: int,
  window: int,
  query: opt(int),
});

const bundleHeader = (meta: WireType) =>
  map({
    v,
    tensors: arr(map({ name: str, shape: arr(int), dtype: str, offset: int, bytes: int, block: opt(int) })),
    meta,
  });
export const modelBundleHeader = bundleHeader(
  map({
    kind: str,
    version: int,
    round: int,
    topology: any,
    headTensors: arr(str),
    classes: arr(str),
    inputShape: arr(int),
    normalization: str,
    createdAt: int,
  }),
);
export const updateBundleHeader = bundleHeader(
  map({
    kind: str,
    agent: str,
    round: int,
    baseVersion: int,
    sampleCount: int,
    epochs: int,
    metricsBefore: nil(evalMetrics),
    metricsAfter: nil(evalMetrics),
    trainMs: int,
    backend: str,
    delta: opt(bool),
  }),
);

// JSON
export const agentStatus = map({
  v,
  agent: str,
  state: str,
  round: nil(int),
  progress: nil(float),
  detail: nil(str),
  backend: nil(str),
  samples: opt(nil(map({ train: int, test: int }))),
  window: opt(nil(map({ state: str, detail: str }))),
  ts: int,
});
export const modelManifest = map({
  v,
  federation: str,
  runId: str,
  version: int,
  round: int,
  sha256: str,
  bytes: int,
  chunks: int,
  chunkBytes: int,
  createdAt: int,
  signature: nil(str),
  metrics: any,
});
