import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger } from '../shared/util/logger.js';

test('one `module` key per log line: nested children and per-call objects replace it, the innermost wins', () => {
  const raw: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      raw.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  const root = createLogger({ name: 'aggregator', destination, level: 'debug' });
  const agg = root.child({ module: 'aggregator', agent: 'x' });
  const cmds = agg.child({ module: 'mes-commands' });
  cmds.info('a');
  cmds.child({ round: 3 }).warn({ module: 'data', n: 1 }, 'b %s', 'c');
  agg.info({ module: 'model-publisher' }, 'd');
  agg.info('e');
  cmds.debug('f');
  const keys = (line: string, key: string) => line.split(`"${key}":`).length - 1;
  assert.equal(raw.length, 5);
  for (const line of raw) {
    assert.equal(keys(line, 'module'), 1, line);
    assert.equal(keys(line, 'service'), 1, line);
  }
  const parsed = raw.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(
    parsed.map((l) => [l.module, l.msg]),
    [
      ['mes-commands', 'a'],
      ['data', 'b c'],
      ['model-publisher', 'd'],
      ['aggregator', 'e'],
      ['mes-commands', 'f'],
    ],
  );
  assert.equal(parsed[1]!.round, 3);
  assert.equal(parsed[1]!.agent, 'x', 'the other bindings stay');
  assert.equal(parsed[1]!.level, 40);
});
