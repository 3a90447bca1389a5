import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ScaffoldClient } from '../edge-agent/scaffold-client.js';
import { encodeBundle } from '../shared/bundle/tensor-bundle.js';
import type { RoundAnnouncement } from '../shared/protocol/messages.js';
import { silentLogger } from '../shared/util/logger.js';
import type { GlobalModel, TrainResult } from '../training/trainer.js';
import { tempDir } from './helpers.js';

/**
 * The agent's SCAFFOLD state (edge-agent/scaffold-client.ts): c_i+ becomes c_i only when the update
 * is accepted, survives a restart (a new instance on the same state folder), is dropped when the
 * update is refused, and is not used in another federation run; the control bundle is checked
 * against the round's base version.
 */

const tensor = (name: string, values: number[]) => ({ name, shape: [values.length], dtype: 'float32' as const, data: Float32Array.from(values) });
const model: GlobalModel = { version: 3, sha256: '', meta: {} as GlobalModel['meta'], tensors: [tensor('w', [1, 2]), tensor('b', [0.5])] };
const ann = (round: number, runId = 'run1') =>
  ({ round, runId, base: { version: 3 }, task: { learningRate: 0.1, scaffold: true }, encoding: 'f32', delta: false }) as unknown as RoundAnnouncement;
const trained = (w: number[], b: number[], steps: number): TrainResult =>
  ({ tensors: [tensor('w', w), tensor('b', b)], steps, sampleCount: 1, trainMs: 0, metricsAfter: null }) as unknown as TrainResult;
const values = (m: ReadonlyMap<string, Float32Array> | null) => (m ? Object.fromEntries([...m].map(([k, v]) => [k, [...v]])) : null);

test('SCAFFOLD client state: accepted c_i+ persists across a restart; refused is dropped; another run starts from 0', async () => {
  const dir = tempDir('scaffold-client');
  try {
    const names = ['w', 'b'];
    const first = new ScaffoldClient(dir.path, silentLogger());
    // Round 1: c = 0, c_i = 0; 2 steps at η 0.1 from w [1, 2] to [0.8, 2.2]: c_i+ = (x - y) / 0.2.
    const round1 = await first.prepare(ann(1), model, names, null);
    assert.deepEqual([round1.c, round1.ci], [null, null]);
    await first.keep(ann(1), model, round1, trained([0.8, 2.2], [0.5], 2));
    assert.equal((await first.prepare(ann(2), model, names, null)).ci, null, 'pending until accepted');
    await first.settle('run1', 1, true);

    // A restart: a new instance reads c_i from the state folder.
    const restarted = new ScaffoldClient(dir.path, silentLogger());
    const control = encodeBundle([tensor('w', [0.5, 0.5]), tensor('b', [0])], { kind: 'control', version: 3 });
    const round2 = await restarted.prepare(ann(2), model, names, control);
    const ci = values(round2.ci)!;
    assert.ok(Math.abs(ci.w![0]! - 1) < 1e-6 && Math.abs(ci.w![1]! + 1) < 1e-6 && ci.b![0] === 0, JSON.stringify(ci));
    assert.deepEqual(values(round2.c), { w: [0.5, 0.5], b: [0] });

    // Round 2's update refused: c_i stays round 1's.
    await restarted.keep(ann(2), model, round2, trained([1, 2], [0.5], 1));
    await restarted.settle('run1', 2, false);
    assert.deepEqual(values((await new ScaffoldClient(dir.path, silentLogger()).prepare(ann(3), model, names, null)).ci), ci);
    assert.deepEqual((await readdir(join(dir.path, 'scaffold'))).sort(), ['ci.flb']);

    // Another federation run: c_i = 0; a control bundle of another version is refused.
    assert.equal((await restarted.prepare(ann(1, 'run2'), model, names, null)).ci, null);
    const stale = encodeBundle([tensor('w', [0, 0]), tensor('b', [0])], { kind: 'control', version: 2 });
    await assert.rejects(restarted.prepare(ann(2), model, names, stale), /FL_MODEL_INCOMPATIBLE|model version 2/);
  } finally {
    dir.cleanup();
  }
});
