import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { GcPacer, MINOR_GC_EVERY_BYTES, v8Collector, type Collector } from '../aggregator/gc-pacer.js';
import { AGGREGATOR_NODE_FLAGS } from '../aggregator/node-flags.js';

function recording(): Collector & { calls: string[] } {
  const calls: string[] = [];
  return { calls, minor: () => calls.push('minor'), major: () => calls.push('major') };
}

test('a scavenge per minorEveryBytes received, whatever the message sizes; a full collection when uploads end', () => {
  const c = recording();
  const pacer = new GcPacer(c, 1000);
  pacer.received(999);
  assert.deepEqual(c.calls, []);
  pacer.received(1);
  assert.deepEqual(c.calls, ['minor']);
  for (let i = 0; i < 10; i++) pacer.received(300);
  assert.deepEqual(c.calls, ['minor', 'minor', 'minor'], '3000 bytes more: three more scavenges would be 4; the count restarts after each');
  pacer.received(5000);
  assert.equal(c.calls.length, 4, 'one message larger than the step: one scavenge');
  pacer.uploadsEnded();
  assert.deepEqual(c.calls.slice(4), ['major']);
  pacer.received(999);
  assert.equal(c.calls.length, 5, 'the full collection restarts the count');
  assert.deepEqual(pacer.counts, { minor: 4, major: 1 });
});

test('without a collector (no --expose-gc) the pacer does nothing', () => {
  const pacer = new GcPacer(null);
  pacer.received(10 * MINOR_GC_EVERY_BYTES);
  pacer.uploadsEnded();
  assert.equal(pacer.active, false);
  assert.deepEqual(pacer.counts, { minor: 0, major: 0 });
  assert.throws(() => new GcPacer(null, 0), RangeError);
});

test("v8Collector: null in a process without --expose-gc; with the aggregator's flags it runs both collections", () => {
  if (typeof (globalThis as { gc?: unknown }).gc !== 'function') assert.equal(v8Collector(), null);
  const script = `
    import('${new URL('../aggregator/gc-pacer.js', import.meta.url).href}').then(({ v8Collector }) => {
      const { PerformanceObserver, constants } = require('node:perf_hooks');
      const kinds = [];
      const obs = new PerformanceObserver((l) => { for (const e of l.getEntries()) kinds.push(e.detail.kind); });
      obs.observe({ entryTypes: ['gc'] });
      const c = v8Collector();
      c.minor();
      c.major();
      setTimeout(() => {
        obs.disconnect();
        process.stdout.write(JSON.stringify({ minor: kinds.includes(constants.NODE_PERFORMANCE_GC_MINOR), major: kinds.includes(constants.NODE_PERFORMANCE_GC_MAJOR) }));
      }, 50);
    });`;
  const r = spawnSync(process.execPath, [...AGGREGATOR_NODE_FLAGS, '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { minor: true, major: true });
});
