import type { Condition } from '../../shared/config/trigger-config.js';
import { ErrorCodes, FedlineError } from '../../shared/protocol/errors.js';

/**
 * Pure helpers of the trigger sources: does a value satisfy a condition, and where is the value
 * in a JSON payload. No I/O, no clock.
 */

export type Scalar = string | number | boolean;

/** Human-readable form of a condition, for status lines and logs. */
export function describeCondition(c: Condition): string {
  if (c.equals !== undefined) return `== ${JSON.stringify(c.equals)}`;
  if (c.notEquals !== undefined) return `!= ${JSON.stringify(c.notEquals)}`;
  if (c.in !== undefined) return `in ${JSON.stringify(c.in)}`;
  if (c.notIn !== undefined) return `not in ${JSON.stringify(c.notIn)}`;
  const r = c.range!;
  return `in [${r.min ?? '-inf'}, ${r.max ?? '+inf'}]`;
}

/**
 * Strings compare with strings, numbers with numbers (a numeric string such as "3" from a JSON
 * payload equals 3), booleans with booleans ("true"/"false" strings too). No other coercion:
 * "Idle" never equals 0.
 */
function sameValue(actual: Scalar, expected: Scalar): boolean {
  if (typeof actual === typeof expected) return actual === expected;
  if (typeof expected === 'number' && typeof actual === 'string') return actual.trim() !== '' && Number(actual) === expected;
  if (typeof expected === 'string' && typeof actual === 'number') return expected.trim() !== '' && Number(expected) === actual;
  if (typeof expected === 'boolean' && typeof actual === 'string') return actual === String(expected);
  if (typeof expected === 'string' && typeof actual === 'boolean') return expected === String(actual);
  return false;
}

function asNumber(v: Scalar): number | null {
  if (typeof v === 'number') return Number.isFinite(v) ? v : null;
  if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) return Number(v);
  return null;
}

export function conditionHolds(c: Condition, value: Scalar): boolean {
  if (c.equals !== undefined) return sameValue(value, c.equals);
  if (c.notEquals !== undefined) return !sameValue(value, c.notEquals);
  if (c.in !== undefined) return c.in.some((e) => sameValue(value, e));
  if (c.notIn !== undefined) return !c.notIn.some((e) => sameValue(value, e));
  const n = asNumber(value);
  if (n === null) return false;
  const { min, max } = c.range!;
  return (min === undefined || n >= min) && (max === undefined || n <= max);
}

/** Can some value of `type` equal `expected` (see sameValue)? */
function typeCanEqual(type: 'string' | 'number', expected: Scalar): boolean {
  if (type === 'string') return true; // "3", "true" and "Idle" are all strings
  if (typeof expected === 'number') return true;
  return typeof expected === 'string' && expected.trim() !== '' && Number.isFinite(Number(expected));
}

/**
 * Can any value of the same type as `sample` ever satisfy `c`? False for a variable whose type
 * rules the condition out for good: a number against `equals: "Idle"`, a boolean against a range.
 * Strings and numbers have endless values (any `!=`, `not in` or range can hold); booleans have two, both are tried.
 */
export function conditionCanHold(c: Condition, sample: Scalar): boolean {
  if (typeof sample === 'boolean') return conditionHolds(c, true) || conditionHolds(c, false);
  const type = typeof sample === 'string' ? 'string' : 'number';
  if (c.equals !== undefined) return typeCanEqual(type, c.equals);
  if (c.in !== undefined) return c.in.some((e) => typeCanEqual(type, e));
  // `!=`, `not in`, and a range (numbers, and numeric strings; the config ensures min <= max).
  return true;
}

/**
 * Reduce a decoded value (OPC UA variant value, JSON value) to a scalar the conditions understand:
 * strings, finite numbers, booleans; an OPC UA LocalizedText gives its text. Anything else
 * (objects, arrays, null) is not a line state.
 */
export function toScalar(value: unknown): Scalar | null {
  if (typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (typeof value === 'bigint') return Number(value);
  if (value && typeof value === 'object' && 'text' in value && typeof (value as { text: unknown }).text === 'string') return (value as { text: string }).text;
  return null;
}

/** Parse "$.a.b[0].c", "a.b", "$['a b'].c" into keys. Throws on a malformed path. */
export function parseJsonPath(path: string): (string | number)[] {
  let rest = path.trim();
  if (rest.startsWith('$')) rest = rest.slice(1);
  const keys: (string | number)[] = [];
  const token = /^(?:\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[(?:'([^']*)'|"([^"]*)")\])/;
  while (rest.length > 0) {
    const m = token.exec(rest);
    if (!m) throw new FedlineError(ErrorCodes.CONFIG_INVALID, `JSON path "${path}": cannot read "${rest}" (use $.a.b, a.b[0] or $['a b'])`);
    if (m[1] !== undefined) keys.push(m[1]);
    else if (m[2] !== undefined) keys.push(Number(m[2]));
    else keys.push((m[3] ?? m[4])!);
    rest = rest.slice(m[0].length);
  }
  return keys;
}

/** The value at `keys` inside `doc`, or undefined when the path does not exist. */
function valueAtPath(doc: unknown, keys: readonly (string | number)[]): unknown {
  let cur: unknown = doc;
  for (const k of keys) {
    if (cur === null || typeof cur !== 'object') return undefined;
    if (typeof k === 'number') {
      if (!Array.isArray(cur)) return undefined;
      cur = cur[k];
    } else {
      if (Array.isArray(cur) || !Object.prototype.hasOwnProperty.call(cur, k)) return undefined;
      cur = (cur as Record<string, unknown>)[k];
    }
  }
  return cur;
}

/**
 * The line-state value carried by an MQTT payload: with a path, the JSON value there; without,
 * the payload itself as a JSON scalar, or its raw text when it is not JSON ("Idle").
 */
export function extractPayloadValue(payload: Buffer, keys: readonly (string | number)[] | null): { value: Scalar } | { error: string } {
  const text = payload.toString('utf8');
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    if (keys && keys.length > 0) return { error: 'payload is not JSON' };
    const trimmed = text.trim();
    return trimmed ? { value: trimmed } : { error: 'empty payload' };
  }
  const raw = keys ? valueAtPath(doc, keys) : doc;
  if (raw === undefined) return { error: 'the JSON path does not exist in the payload' };
  const value = toScalar(raw);
  if (value === null) return { error: `the value is ${raw === null ? 'null' : Array.isArray(raw) ? 'an array' : typeof raw}, not a string, number or boolean` };
  return { value };
}
