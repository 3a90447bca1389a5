import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TrainingWindow } from '../edge-agent/training-window.js';
import { backoffDelayMs } from '../edge-agent/triggers/backoff.js';
import { decide, openNotBefore, type GateNode, type SourceState } from '../edge-agent/triggers/combine.js';
import { conditionCanHold, conditionHolds, describeCondition, extractPayloadValue, parseJsonPath } from '../edge-agent/triggers/condition.js';
import { TriggerGate } from '../edge-agent/triggers/gate.js';
import { ProblemSet } from '../edge-agent/triggers/problem-set.js';
import { Schedule } from '../edge-agent/triggers/schedule.js';
import type { SourceCallbacks, SourceProblem, TriggerSource } from '../edge-agent/triggers/source.js';
import { ScheduleTriggerSource } from '../edge-agent/triggers/sources/schedule-source.js';
import { planWindow } from '../edge-agent/triggers/window-plan.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { parseConfig } from '../shared/config/config-file.js';
import { conditionSchema, triggerSchema } from '../shared/config/trigger-config.js';
import { FakeClock } from './fake-clock.js';

const H = 3_600_000;
const utc = (iso: string) => Date.parse(iso.endsWith('Z') ? iso : `${iso}Z`);

test('conditions: equals / notEquals / in / notIn / range, with strict but sensible coercion', () => {
  assert.ok(conditionHolds({ equals: 'Idle' }, 'Idle'));
  assert.ok(!conditionHolds({ equals: 'Idle' }, 'idle'), 'case-sensitive');
  assert.ok(!conditionHolds({ equals: 'Idle' }, 0), 'a string never equals a number that is not its value');
  assert.ok(conditionHolds({ equals: 3 }, '3') && conditionHolds({ equals: '3' }, 3), 'numeric strings equal their number');
  assert.ok(!conditionHolds({ equals: 3 }, ''), 'empty string is not 0');
  assert.ok(conditionHolds({ equals: true }, true) && conditionHolds({ equals: true }, 'true') && !conditionHolds({ equals: true }, 1));
  assert.ok(conditionHolds({ notEquals: 'Running' }, 'Idle') && !conditionHolds({ notEquals: 'Running' }, 'Running'));
  assert.ok(conditionHolds({ in: ['Idle', 'Maintenance'] }, 'Maintenance') && !conditionHolds({ in: ['Idle'] }, 'Running'));
  assert.ok(conditionHolds({ notIn: ['Running', 'Setup'] }, 'Idle') && !conditionHolds({ notIn: ['Running'] }, 'Running'));
  assert.ok(conditionHolds({ range: { min: 0, max: 5 } }, 5) && conditionHolds({ range: { min: 0, max: 5 } }, '0.5'));
  assert.ok(!conditionHolds({ range: { min: 0, max: 5 } }, 5.01) && !conditionHolds({ range: { min: 0 } }, 'high'));
  assert.ok(conditionHolds({ range: { max: 10 } }, -1e9));
  assert.equal(describeCondition({ in: ['Idle', 'Off'] }), 'in ["Idle","Off"]');
  // the schema wants exactly one operator, and a sane range
  assert.ok(!conditionSchema.safeParse({ equals: 'a', in: ['b'] }).success);
  assert.ok(!conditionSchema.safeParse({}).success);
  assert.ok(!conditionSchema.safeParse({ range: {} }).success);
  assert.ok(!conditionSchema.safeParse({ range: { min: 3, max: 1 } }).success);
  assert.ok(!conditionSchema.safeParse({ like: 'Idle' }).success);
});

test('a value whose type can never satisfy the condition is told apart from one that does not satisfy it now', () => {
  // numbers (an Int32 line state)
  assert.ok(!conditionCanHold({ equals: 'Idle' }, 4), 'an Int32 never equals "Idle"');
  assert.ok(!conditionCanHold({ in: ['Idle', 'Maintenance'] }, 6));
  assert.ok(!conditionCanHold({ equals: true }, 1));
  assert.ok(conditionCanHold({ equals: 4 }, 6) && conditionCanHold({ equals: '4' }, 6) && conditionCanHold({ in: ['Idle', '4'] }, 6));
  assert.ok(conditionCanHold({ notEquals: 'Running' }, 6) && conditionCanHold({ range: { min: 0, max: 5 } }, 6));
  // strings can be anything, "4" and "true" included
  for (const c of [{ equals: 4 }, { equals: true }, { equals: 'Idle' }, { range: { max: 3 } }, { notIn: ['a'] }]) assert.ok(conditionCanHold(c, 'Running'));
  // booleans have two values: both are tried
  assert.ok(!conditionCanHold({ equals: 'Idle' }, false) && !conditionCanHold({ range: { min: 0 } }, true) && !conditionCanHold({ equals: 1 }, true));
  assert.ok(conditionCanHold({ equals: true }, false) && conditionCanHold({ equals: 'true' }, false) && conditionCanHold({ notEquals: true }, true));
  assert.ok(!conditionCanHold({ notIn: [true, false] }, true));
});

test('open alerts: one per code, reported once, each closed by its own recovery', () => {
  const seen: SourceProblem[] = [];
  const set = new ProblemSet('opcua x', (p) => seen.push(p));
  assert.ok(set.raise(ErrorCodes.OPCUA_SESSION_LOST, 'lost'));
  assert.ok(!set.raise(ErrorCodes.OPCUA_SESSION_LOST, 'lost again'), 'once per code while open');
  assert.ok(set.raise(ErrorCodes.OPCUA_UNREACHABLE, 'unreachable'));
  assert.ok(set.raise(ErrorCodes.OPCUA_BAD_STATUS, 'bad'));
  assert.ok(!set.resolve(ErrorCodes.OPCUA_SECURITY, 'never opened'), 'nothing to close');
  set.resolveAll([ErrorCodes.OPCUA_UNREACHABLE, ErrorCodes.OPCUA_SESSION_LOST, ErrorCodes.OPCUA_SECURITY], (c) => `works again (${c})`);
  assert.deepEqual(set.codes, [ErrorCodes.OPCUA_BAD_STATUS], 'a node fault stays open until a Good value');
  assert.deepEqual(
    seen.map((p) => [p.code, p.recovered, p.message]),
    [
      [ErrorCodes.OPCUA_SESSION_LOST, false, 'lost'],
      [ErrorCodes.OPCUA_UNREACHABLE, false, 'unreachable'],
      [ErrorCodes.OPCUA_BAD_STATUS, false, 'bad'],
      [ErrorCodes.OPCUA_SESSION_LOST, true, `works again (${ErrorCodes.OPCUA_SESSION_LOST})`],
      [ErrorCodes.OPCUA_UNREACHABLE, true, `works again (${ErrorCodes.OPCUA_UNREACHABLE})`],
    ],
  );
  assert.ok(set.raise(ErrorCodes.OPCUA_SESSION_LOST, 'lost once more'), 'a closed code can open again');
  assert.ok(seen.every((p) => p.source === 'opcua x'));
});

test('JSON paths and MQTT payload values', () => {
  assert.deepEqual(parseJsonPath('$.line.state'), ['line', 'state']);
  assert.deepEqual(parseJsonPath('lines[1].mode'), ['lines', 1, 'mode']);
  assert.deepEqual(parseJsonPath("$['line 1'].state"), ['line 1', 'state']);
  assert.throws(() => parseJsonPath('$.a..b'), /JSON path/);
  const p = (o: unknown) => Buffer.from(typeof o === 'string' ? o : JSON.stringify(o));
  assert.deepEqual(extractPayloadValue(p({ line: { state: 'Idle' } }), ['line', 'state']), { value: 'Idle' });
  assert.deepEqual(extractPayloadValue(p({ lines: [{ m: 1 }, { m: 2 }] }), ['lines', 1, 'm']), { value: 2 });
  assert.deepEqual(extractPayloadValue(p('Idle'), null), { value: 'Idle' }, 'raw text without a path');
  assert.deepEqual(extractPayloadValue(p('"Idle"'), null), { value: 'Idle' }, 'a JSON string');
  assert.deepEqual(extractPayloadValue(p('42'), null), { value: 42 });
  assert.match((extractPayloadValue(p({ line: {} }), ['line', 'state']) as { error: string }).error, /does not exist/);
  assert.match((extractPayloadValue(p({ line: { state: null } }), ['line', 'state']) as { error: string }).error, /null/);
  assert.match((extractPayloadValue(p({ line: { state: [1] } }), ['line', 'state']) as { error: string }).error, /array/);
  assert.match((extractPayloadValue(p('not json'), ['a']) as { error: string }).error, /not JSON/);
  assert.deepEqual(extractPayloadValue(p({ constructor: 1 }), ['toString']), { error: 'the JSON path does not exist in the payload' }, 'no prototype lookups');
});

test('combining sources: all / any, unknown never counts as open', () => {
  const st = (state: SourceState['state']): SourceState => ({ state, detail: state, since: 0 });
  const tree: GateNode = {
    kind: 'all',
    children: [
      { kind: 'source', id: 'a' },
      {
        kind: 'any',
        children: [
          { kind: 'source', id: 'b' },
          { kind: 'source', id: 'c' },
        ],
      },
    ],
  };
  const run = (a: string, b: string, c: string) =>
    decide(
      tree,
      new Map([
        ['a', st(a as never)],
        ['b', st(b as never)],
        ['c', st(c as never)],
      ]),
    );
  assert.deepEqual(run('open', 'open', 'closed'), { state: 'open', open: true, detail: 'a: open; b: open' });
  assert.equal(run('open', 'closed', 'closed').state, 'closed');
  assert.equal(run('open', 'unknown', 'closed').state, 'unknown');
  assert.equal(run('open', 'unknown', 'open').state, 'open', 'any: one open child suffices');
  assert.equal(run('unknown', 'open', 'open').state, 'unknown');
  assert.equal(run('unknown', 'closed', 'closed').state, 'closed', 'all: closed beats unknown');
  assert.equal(run('unknown', 'open', 'open').open, false, 'no training while the line state is unknown');
  assert.match(run('open', 'closed', 'unknown').detail, /b: closed|c: unknown/);
  assert.equal(decide({ kind: 'source', id: 'missing' }, new Map()).state, 'unknown');
});

test('the lower bound on the next opening: schedules bound it, live signals do not', () => {
  const now = 1000;
  const bounds: Record<string, number | null> = { sched: 5000, opc: null, never: Infinity };
  const b = (id: string) => bounds[id]!;
  const leaf = (id: string): GateNode => ({ kind: 'source', id });
  assert.equal(openNotBefore({ kind: 'all', children: [leaf('sched'), leaf('opc')] }, now, b), 5000, 'all: not before the schedule');
  assert.equal(openNotBefore({ kind: 'any', children: [leaf('sched'), leaf('opc')] }, now, b), null, 'any: the OPC UA line may go idle at any moment');
  assert.equal(openNotBefore({ kind: 'any', children: [leaf('sched'), leaf('never')] }, now, b), 5000);
  assert.equal(openNotBefore({ kind: 'all', children: [leaf('opc'), leaf('never')] }, now, b), Infinity);
  assert.equal(openNotBefore(leaf('opc'), now, b), null);
});

test('window plan: run, wait until the deadline, or give up and say why', () => {
  const deadlineAt = utc('2024-01-01T12:00:00');
  const now = deadlineAt - H;
  assert.deepEqual(planWindow({ now, deadlineAt, open: true, openNotBefore: now }), { action: 'run' });
  assert.deepEqual(planWindow({ now, deadlineAt, open: false, openNotBefore: null }), { action: 'wait', until: deadlineAt });
  assert.deepEqual(planWindow({ now, deadlineAt, open: false, openNotBefore: now + 10 }), { action: 'wait', until: deadlineAt });
  const late = planWindow({ now, deadlineAt, open: false, openNotBefore: deadlineAt + H });
  assert.equal(late.action, 'give-up');
  assert.match((late as { reason: string }).reason, /opens at 2024-01-01T13:00:00.000Z, after the round's deadline 2024-01-01T12:00:00.000Z/);
  assert.match((planWindow({ now, deadlineAt, open: false, openNotBefore: Infinity }) as { reason: string }).reason, /never opens/);
  assert.match(
    (planWindow({ now: deadlineAt, deadlineAt, open: false, openNotBefore: null }) as { reason: string }).reason,
    /did not open before the round's deadline/,
  );
});

test('reconnect back-off grows exponentially to its cap, with bounded jitter', () => {
  assert.equal(
    backoffDelayMs(0, 500, 30_000, () => 1),
    500,
  );
  assert.equal(
    backoffDelayMs(0, 500, 30_000, () => 0),
    250,
  );
  assert.equal(
    backoffDelayMs(3, 500, 30_000, () => 1),
    4000,
  );
  assert.equal(
    backoffDelayMs(20, 500, 30_000, () => 1),
    30_000,
  );
  assert.equal(
    backoffDelayMs(1000, 500, 30_000, () => 0.5),
    22_500,
  );
  for (let a = 0; a < 12; a++) {
    const d = backoffDelayMs(a, 100, 5000);
    const cap = Math.min(5000, 100 * 2 ** a);
    assert.ok(d >= cap / 2 && d <= cap, `attempt ${a}: ${d}`);
  }
});

test('schedule windows in UTC: wrapping midnight, days, next change and next opening', () => {
  const s = new Schedule({ windows: ['22:00-06:00'], timeZone: 'UTC' });
  // 2024-01-01 is a Monday.
  assert.equal(s.isOpen(utc('2024-01-01T21:59:59')), false);
  assert.equal(s.isOpen(utc('2024-01-01T22:00:00')), true);
  assert.equal(s.isOpen(utc('2024-01-02T05:59:59')), true);
  assert.equal(s.isOpen(utc('2024-01-02T06:00:00')), false);
  assert.equal(s.state(utc('2024-01-01T21:00:00')).nextChangeAt, utc('2024-01-01T22:00:00'));
  assert.equal(s.state(utc('2024-01-01T23:00:00')).nextChangeAt, utc('2024-01-02T06:00:00'));
  assert.equal(s.nextOpenAt(utc('2024-01-02T07:00:00')), utc('2024-01-02T22:00:00'));
  assert.equal(s.nextOpenAt(utc('2024-01-02T23:00:00')), utc('2024-01-02T23:00:00'), 'open now: now');

  const fri = new Schedule({ windows: ['22:00-06:00'], timeZone: 'UTC', days: ['fri'] });
  assert.equal(fri.isOpen(utc('2024-01-05T22:30:00')), true, 'Friday night');
  assert.equal(fri.isOpen(utc('2024-01-06T05:00:00')), true, 'Saturday morning belongs to the window that started Friday');
  assert.equal(fri.isOpen(utc('2024-01-06T22:30:00')), false, 'not Saturday night');
  assert.equal(fri.nextOpenAt(utc('2024-01-06T23:00:00')), utc('2024-01-12T22:00:00'), 'next Friday');
  const sun = new Schedule({ windows: ['23:00-01:00'], timeZone: 'UTC', days: ['sun'] });
  assert.equal(sun.isOpen(utc('2024-01-08T00:30:00')), true, 'a Sunday window runs into Monday (wraps the week)');

  const allDay = new Schedule({ windows: ['00:00-24:00'], timeZone: 'UTC' });
  assert.equal(allDay.isOpen(utc('2024-03-03T12:34:56')), true);
  const two = new Schedule({ windows: ['12:00-12:30', '18:00-19:00'], timeZone: 'UTC' });
  assert.equal(two.nextOpenAt(utc('2024-01-01T12:45:00')), utc('2024-01-01T18:00:00'));
});

test('schedule windows in a time zone with daylight saving (Europe/Berlin)', () => {
  const s = new Schedule({ windows: ['22:00-06:00'], timeZone: 'Europe/Berlin' });
  assert.equal(s.isOpen(utc('2024-01-01T21:30:00')), true, '22:30 CET');
  assert.equal(s.isOpen(utc('2024-07-01T20:30:00')), true, '22:30 CEST');
  assert.equal(s.isOpen(utc('2024-07-01T19:30:00')), false, '21:30 CEST');
  assert.equal(s.nextOpenAt(utc('2024-07-01T19:30:00')), utc('2024-07-01T20:00:00'));
  // Spring forward (31 March 2024, 02:00 CET -> 03:00 CEST): a 01:00-05:00 window ends at 03:00 UTC, not 04:00.
  const spring = new Schedule({ windows: ['01:00-05:00'], timeZone: 'Europe/Berlin' });
  assert.equal(spring.nextOpenAt(utc('2024-03-30T23:30:00')), utc('2024-03-31T00:00:00'));
  assert.equal(spring.state(utc('2024-03-31T00:30:00')).nextChangeAt, utc('2024-03-31T03:00:00'));
  // Fall back (27 October 2024, 03:00 CEST -> 02:00 CET): a 22:00-04:00 window ends at 03:00 UTC.
  const fall = new Schedule({ windows: ['22:00-04:00'], timeZone: 'Europe/Berlin' });
  assert.equal(fall.state(utc('2024-10-26T21:00:00')).nextChangeAt, utc('2024-10-27T03:00:00'));
  assert.equal(fall.isOpen(utc('2024-10-27T02:59:00')), true);
  assert.equal(fall.isOpen(utc('2024-10-27T03:00:00')), false);
});

test('trigger config: trees validate, mistakes are named', () => {
  const ok = {
    type: 'all',
    sources: [
      { type: 'opcua', endpoint: 'opc.tcp://plc:4840', nodeId: 'ns=1;s=Line1.State', when: { equals: 'Idle' } },
      {
        type: 'any',
        sources: [
          { type: 'schedule', windows: ['22:00-06:00'], timeZone: 'Europe/Berlin' },
          { type: 'mqtt', topic: 'mes/line1', path: '$.state', when: { in: ['Idle'] } },
        ],
      },
    ],
  };
  const parsed = parseConfig(triggerSchema, ok, 'test') as { sources: { securityMode?: string; samplingIntervalMs?: number }[] };
  assert.equal(parsed.sources[0]!.securityMode, 'None');
  assert.equal(parsed.sources[0]!.samplingIntervalMs, 250);
  const bad = (spec: unknown, re: RegExp) => assert.throws(() => parseConfig(triggerSchema, spec, 'agent.json'), re);
  bad({ type: 'schedule', windows: ['25:00-06:00'] }, /"windows.0": a window is "HH:MM-HH:MM"/);
  bad({ type: 'schedule', windows: ['22:00-22:00'] }, /must not start and end at the same time/);
  bad({ type: 'schedule', windows: ['22:00-06:00'], timeZone: 'Mars/Olympus' }, /"timeZone": must be an IANA time zone/);
  bad({ type: 'mqtt', topic: 'mes/+/state', when: { equals: 1 } }, /"topic": must be a topic without wildcards/);
  bad({ type: 'opcua', endpoint: 'http://plc', nodeId: 'ns=1;s=x', when: { equals: 1 } }, /"endpoint"/);
  bad(
    { type: 'opcua', endpoint: 'opc.tcp://plc:4840', nodeId: 'ns=1;s=x', when: { equals: 1 }, securityMode: 'Sign' },
    /securityMode None goes with securityPolicy None/,
  );
  bad(
    { type: 'opcua', endpoint: 'opc.tcp://plc:4840', nodeId: 'ns=1;s=x', when: { equals: 1 }, user: { username: 'u' } },
    /exactly one of password and passwordFile/,
  );
  bad({ type: 'all', sources: [{ type: 'always', extra: 1 }] }, /"sources.0": unknown key|unknown key/);
  bad({ type: 'sometimes' }, /"type"/);
});

/** A source the test sets by hand. */
class HandSource implements TriggerSource {
  private cb: SourceCallbacks | null = null;
  constructor(readonly id: string) {}
  async start(cb: SourceCallbacks) {
    this.cb = cb;
    cb.update({ state: 'closed', detail: 'line running' });
  }
  async stop() {}
  openNotBefore() {
    return null;
  }
  set(state: 'open' | 'closed' | 'unknown', detail: string = state) {
    this.cb!.update({ state, detail });
  }
}

test('gate on a fake clock: a schedule source ticks, changes are emitted, plans follow the sources', async () => {
  const clock = new FakeClock(utc('2024-01-01T21:00:00'));
  const hand = new HandSource('plc');
  const sched = new ScheduleTriggerSource({ type: 'schedule', windows: ['22:00-23:00'], timeZone: 'UTC' }, clock);
  const gate = new TriggerGate(
    {
      kind: 'any',
      children: [
        { kind: 'source', id: 'plc' },
        { kind: 'source', id: sched.id },
      ],
    },
    [hand, sched],
    clock,
  );
  const seen: string[] = [];
  gate.on('change', (s: { state: string }) => seen.push(s.state));
  await gate.start();
  assert.equal(gate.open, false);
  assert.equal(gate.openNotBefore(), null, 'the PLC may go idle at any moment');
  clock.advanceTo(utc('2024-01-01T22:00:01'));
  assert.equal(gate.open, true, 'the schedule window opened on its timer');
  clock.advanceTo(utc('2024-01-01T23:00:01'));
  assert.equal(gate.open, false);
  hand.set('open', 'line idle');
  assert.equal(gate.open, true);
  assert.deepEqual(seen, ['closed', 'open', 'closed', 'open']);
  await gate.stop();
  assert.equal(clock.pending, 0, 'stopping the schedule clears its timer');

  // all(schedule, plc): the schedule bounds the next opening, so a round due before it is given up at once.
  const clock2 = new FakeClock(utc('2024-01-01T08:00:00'));
  const hand2 = new HandSource('plc');
  const night = new ScheduleTriggerSource({ type: 'schedule', windows: ['22:00-06:00'], timeZone: 'UTC' }, clock2);
  const gate2 = new TriggerGate(
    {
      kind: 'all',
      children: [
        { kind: 'source', id: 'plc' },
        { kind: 'source', id: night.id },
      ],
    },
    [hand2, night],
    clock2,
  );
  await gate2.start();
  hand2.set('open');
  assert.equal(gate2.openNotBefore(), utc('2024-01-01T22:00:00'));
  assert.equal(gate2.plan(utc('2024-01-01T12:00:00')).action, 'give-up');
  assert.deepEqual(gate2.plan(utc('2024-01-02T12:00:00')), { action: 'wait', until: utc('2024-01-02T12:00:00') });
  await gate2.stop();
});

test('training window acquire(): waits for the gate, gives up at the deadline or at once when a schedule says so', async () => {
  const clock = new FakeClock(utc('2024-01-01T10:00:00'));
  const hand = new HandSource('plc');
  const gate = new TriggerGate({ kind: 'source', id: 'plc' }, [hand], clock);
  await gate.start();
  const window = new TrainingWindow(gate, clock);
  const waiting: string[] = [];
  // 1. opens before the deadline
  const acquired = window.acquire(clock.now() + H, new AbortController().signal, (why) => waiting.push(why));
  await new Promise((r) => setImmediate(r));
  hand.set('unknown', 'OPC UA server unreachable');
  await new Promise((r) => setImmediate(r));
  hand.set('open', 'line idle');
  await acquired;
  assert.deepEqual(waiting, ['plc: line running', 'plc: OPC UA server unreachable']);
  // 2. never opens: rejected with FL_WINDOW_MISSED when the deadline passes, not later
  hand.set('closed');
  const missed = window.acquire(clock.now() + H, new AbortController().signal, () => undefined);
  await new Promise((r) => setImmediate(r));
  clock.advance(H + 5);
  await assert.rejects(
    missed,
    (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.WINDOW_MISSED && /did not open before the round's deadline/.test(e.message),
  );
  // 3. the round ends while waiting: its reason comes out
  const ac = new AbortController();
  const aborted = window.acquire(clock.now() + H, ac.signal, () => undefined);
  ac.abort(new FedlineError(ErrorCodes.ROUND_CLOSED, 'round 3 closed'));
  await assert.rejects(aborted, (e: unknown) => e instanceof FedlineError && e.code === ErrorCodes.ROUND_CLOSED);
  assert.equal(clock.pending, 0, 'no timer left behind');
  await gate.stop();
});
