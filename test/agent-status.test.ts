import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AgentStatusPublisher } from '../edge-agent/agent-status.js';
import type { AgentStatus } from '../shared/protocol/messages.js';
import type { Transport } from '../shared/transport/transport.js';
import { deferred, type Deferred } from '../shared/util/async.js';

test('a state change made while an earlier status is being published is reported once, with its own status', async () => {
  // Prepare: a transport whose publishes complete only when the test says so.
  const pending: Deferred<void>[] = [];
  const published: AgentStatus[] = [];
  const transport = {
    publish: (_topic: string, payload: Buffer) => {
      published.push(JSON.parse(payload.toString()) as AgentStatus);
      const d = deferred<void>();
      pending.push(d);
      return d.promise;
    },
  } as unknown as Transport;
  const changes: string[] = [];
  const status = new AgentStatusPublisher(transport, 'fl/test/agent/site-a/status', 'site-a', (s) => changes.push(`${s.state}:${String(s.progress)}`));

  // Execute: downloading; a progress update in flight; then evaluating before that progress is acknowledged.
  const a = status.set({ state: 'downloading', round: 1, progress: 0 }, true);
  pending[0]!.resolve();
  await a;
  const progress = status.set({ progress: 0.5 }, true);
  const evaluating = status.set({ state: 'evaluating', progress: null }, true);
  pending[1]!.resolve();
  pending[2]!.resolve();
  await Promise.all([progress, evaluating]);

  // Assert: each state change once, in order, with the status that made it.
  assert.deepEqual(changes, ['downloading:0', 'evaluating:null']);
  assert.deepEqual(
    published.map((s) => s.state),
    ['downloading', 'downloading', 'evaluating'],
  );
});
