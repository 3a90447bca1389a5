import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Reassembler } from '../shared/bundle/reassembly.js';
import { decodeMsgpack } from '../shared/protocol/wire-codec.js';
import { fedAvg } from '../shared/fl/fedavg.js';
import { silentLogger } from '../shared/util/logger.js';
import { SUPPORTED_VERSIONS, updateMetaSchema, updateTopicMessageSchema, type UpdateMeta } from '../shared/protocol/messages.js';
import { MqttTransport } from '../shared/transport/mqtt-transport.js';
import { bundleTensors, decodeBundle, sha256Hex, type DecodedBundle } from '../shared/bundle/tensor-bundle.js';
import { createTopics } from '../shared/protocol/topics.js';
import type { FsModelStore } from '../aggregator/model-store.js';

/** Listens to the update topics like any subscriber could, and reassembles what each agent sent. */
export async function captureUpdates(
  url: string,
  root = 'fl/test',
  login: { username?: string; password?: string } = {},
): Promise<{ updates: Map<string, DecodedBundle<UpdateMeta>>; close(): Promise<void> }> {
  const topics = createTopics(root);
  const transport = await MqttTransport.connect({ url, clientId: `test-observer-${Math.random().toString(36).slice(2, 8)}`, logger: silentLogger(), ...login });
  const assemblers = new Map<string, { upload: string; r: Reassembler; sha256: string | null }>();
  const updates = new Map<string, DecodedBundle<UpdateMeta>>();
  await transport.subscribe(topics.updatesAll(), (m) => {
    try {
      const msg = decodeMsgpack(m.payload, updateTopicMessageSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'update' });
      if (msg.type === 'eval' || msg.type === 'bn-stats') return;
      const key = `${msg.round}/${msg.agent}`;
      let a = assemblers.get(key);
      if (msg.type === 'update-chunk') {
        if (!a || a.upload !== msg.upload || !a.r.matches(msg))
          assemblers.set(key, (a = { upload: msg.upload, r: Reassembler.fromChunk(msg, 1 << 30), sha256: null }));
        a.r.accept(msg);
      } else if (a && a.upload === msg.upload) {
        a.sha256 = msg.sha256; // update-done carries the bundle's SHA-256
      }
      if (a && a.r.complete && a.sha256) updates.set(key, decodeBundle(Buffer.from(a.r.finish(a.sha256)), updateMetaSchema));
    } catch {
      // the tests that send garbage check the aggregator's handling, not the observer's
    }
  });
  return { updates, close: () => transport.close() };
}

/**
 * The global model version `version` equals the sample-weighted average of the given updates
 * (within 1e-6 of a float64 reference), and every named agent holds exactly that model (SHA-256).
 */
export async function assertFedAvgResult(store: FsModelStore, version: number, updates: DecodedBundle<UpdateMeta>[], agentStateDirs: string[]): Promise<void> {
  const stored = await store.get(version);
  assert.ok(stored, `version ${version} is stored`);
  const bundle = await store.readBundle(version);
  const global = new Map(bundleTensors(decodeBundle(bundle)).map((t) => [t.name, t.data]));
  const inputs = updates.map((u) => ({
    id: u.header.meta.agent,
    weight: u.header.meta.sampleCount,
    tensors: new Map(bundleTensors(u).map((t) => [t.name, t.data])),
  }));
  const names = [...inputs[0]!.tensors.keys()];
  const total = inputs.reduce((s, i) => s + i.weight, 0);
  let compared = 0;
  for (const name of names) {
    const got = global.get(name)!;
    for (let i = 0; i < got.length; i++) {
      let ref = 0;
      for (const inp of inputs) ref += (inp.weight / total) * inp.tensors.get(name)![i]!;
      assert.ok(Math.abs(got[i]! - ref) <= 1e-6 * Math.max(1, Math.abs(ref)), `${name}[${i}] = ${got[i]}, float64 reference ${ref}`);
      compared++;
    }
  }
  assert.ok(compared > 1000, `compared ${compared} weights`);
  // Cross-check with the library's own FedAvg (same order, same rounding): bit-identical.
  const lib = fedAvg(inputs, names);
  const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  for (const name of names) assert.ok(bytes(lib.get(name)!).equals(bytes(global.get(name)!)), `${name}: the library's FedAvg gives the same bits`);
  // Every agent downloaded exactly this model.
  for (const dir of agentStateDirs) {
    const files = readdirSync(join(dir, 'models')).filter((f) => f.startsWith(`v${version}-`));
    assert.equal(files.length, 1, `${dir} holds version ${version}`);
    assert.equal(sha256Hex(readFileSync(join(dir, 'models', files[0]!))), stored.sha256, `${dir}: SHA-256 of its copy of v${version}`);
  }
}
