import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ModelBuilder } from '../aggregator/model-builder.js';
import { FsModelStore } from '../aggregator/model-store.js';
import { UpdateSpool, type SpooledUpdate } from '../aggregator/update-spool.js';
import { createStrategy } from '../aggregator/strategy-registry.js';
import { aggregatorConfigSchema } from '../shared/config/service-config.js';
import { parseConfig } from '../shared/config/config-file.js';
import { silentLogger } from '../shared/util/logger.js';
import { fedAvgStreamed } from '../shared/fl/fedavg.js';
import type { UpdateMeta } from '../shared/protocol/messages.js';
import { elementCount } from '../shared/bundle/tensor-bundle.js';
import { encodeUpdateSource } from '../shared/bundle/encoded-update.js';
import { denseShapes, memoryOf, parameterCount, syntheticTensors, vgg19Shapes, writeSyntheticModel } from './synthetic.js';

/**
 * `npm run bench:aggregate`: FedAvg of 10 VGG-19-sized updates (139.6 M float32 parameters each,
 * synthetic weights), measured side by side in one run with:
 *
 *   - a plain memory copy of the same bytes (each update copied once: the memory-bandwidth roofline);
 *   - FedAvg's arithmetic over the 10 updates held in memory (the goal: >= 0.5 of the roofline),
 *     with the WebAssembly SIMD kernels and with the plain JavaScript fallback;
 *   - the aggregator's own path: spooled update files -> block readers -> FedAvg, and the same
 *     writing the new model version (weights file, SHA-256, fsync);
 *   - a float64 reference (normalised weights, clients in reverse order): within 1e-6; and the
 *     file path's model must be bit-identical to the in-memory result.
 *
 *   - each aggregation strategy (fedavg, fedavg-clipped, trimmed-mean, median; aggregator/strategy-registry.ts)
 *     on the aggregator's path, side by side: MB/s of update data aggregated and the process's
 *     peak RSS during that strategy alone (VmHWM reset through /proc/self/clear_refs before each).
 *
 * Memory: the in-memory part holds the 10 updates (5.6 GB) plus one model-sized buffer; it is
 * freed before the file part, which holds blocks only (the files sit in the page cache).
 */
const usage = `usage: node --expose-gc dist/bench/aggregate.js [options]   (npm run bench:aggregate -- [options])
  --updates N        updates to aggregate (10)
  --params N         parameters per update, in dense layers (default: VGG-19's 139586628)
  --dir DIR          folder for the spool and model files (default: a temp folder, removed at the end)
  --repeat N         runs of each FedAvg measurement; the best counts (2)
  --strategies LIST  strategies compared side by side, comma-separated (fedavg,fedavg-clipped,trimmed-mean,median; "" for none)
  --strategies-only  skip the roofline and float64 parts: only the strategies' table
  --json FILE        also write the strategies' figures to FILE
  --help             this text`;

const { values: args } = parseArgs({
  options: {
    updates: { type: 'string', default: '10' },
    params: { type: 'string' },
    dir: { type: 'string' },
    repeat: { type: 'string', default: '2' },
    strategies: { type: 'string', default: 'fedavg,fedavg-clipped,trimmed-mean,median' },
    'strategies-only': { type: 'boolean', default: false },
    json: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  process.stdout.write(usage + '\n');
  process.exit(0);
}
const K = Number(args.updates);
const shapes = args.params ? denseShapes(Number(args.params)) : vgg19Shapes();
const params = parameterCount(shapes);
const repeat = Math.max(1, Number(args.repeat));
const root = args.dir ?? mkdtempSync(join(tmpdir(), 'fedline-bench-aggregate-'));
const GB = 1e9;
const say = (s: string) => process.stdout.write(s + '\n');
const agentName = (k: number) => `agent-${String(k).padStart(2, '0')}`;
const sampleCount = (k: number) => 100 + 37 * k;

function updateMeta(k: number): UpdateMeta {
  return {
    kind: 'update',
    agent: agentName(k),
    round: 1,
    baseVersion: 0,
    sampleCount: sampleCount(k),
    epochs: 1,
    metricsBefore: null,
    metricsAfter: null,
    trainMs: 0,
    backend: 'synthetic',
  };
}

async function writeUpdates(spool: UpdateSpool): Promise<SpooledUpdate[]> {
  spool.ensureRound(1);
  const infos: SpooledUpdate[] = [];
  const buf = Buffer.allocUnsafeSlow(4 << 20);
  for (let k = 1; k <= K; k++) {
    const meta = updateMeta(k);
    const source = encodeUpdateSource(syntheticTensors(shapes, k), meta, { encoding: 'f32', delta: false });
    const part = spool.partPath(1, meta.agent, 'bench');
    const fh = await open(part, 'w');
    const hash = createHash('sha256');
    for (let pos = 0; pos < source.byteLength; pos += buf.byteLength) {
      const piece = buf.subarray(0, Math.min(buf.byteLength, source.byteLength - pos));
      source.read(pos, piece);
      hash.update(piece);
      await fh.write(piece, 0, piece.byteLength, pos);
    }
    await fh.close();
    const info: SpooledUpdate = {
      agent: meta.agent,
      upload: 'bench',
      sampleCount: meta.sampleCount,
      bytes: source.byteLength,
      sha256: hash.digest('hex'),
      metricsBefore: null,
      metricsAfter: null,
      trainMs: 0,
      delta: false,
      payloadStart: source.payloadStart,
      tensors: [...source.specs],
      acceptedAt: Date.now(),
    };
    await spool.commit(1, info, part);
    infos.push(info);
  }
  return infos;
}

const best = (xs: number[]) => Math.min(...xs);

type Tensors = { name: string; length: number }[];
/** One line of the results table: what was measured and its seconds per run. */
type Row = { what: string; seconds: number[] };

async function main(): Promise<void> {
  const payloadBytes = params * 4;
  const inputBytes = K * payloadBytes;
  const tensors = shapes.map((s) => ({ name: s.name, length: elementCount(s.shape) }));
  say(
    `fedline bench:aggregate: FedAvg of ${K} updates of ${(params / 1e6).toFixed(1)} M float32 parameters (${(payloadBytes / 1e6).toFixed(1)} MB each, ${(inputBytes / GB).toFixed(2)} GB in all)`,
  );
  say(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; files in ${root}`);
  const rows: Row[] = [];
  const row = (what: string) => {
    const r = { what, seconds: [] as number[] };
    rows.push(r);
    return r.seconds;
  };
  const names = args.strategies.split(',').filter((x) => x.length > 0);
  if (args['strategies-only']) {
    await compareStrategies(names, inputBytes);
    return;
  }
  const memory = await inMemory(tensors, row, payloadBytes);
  const fileSha = await aggregatorPath(tensors, row);
  report(rows, inputBytes, memory, fileSha);
  await compareStrategies(names, inputBytes);
}

/** The arithmetic against the memory-bandwidth roofline, the updates held in memory; and the float64 reference. */
async function inMemory(
  tensors: Tensors,
  row: (what: string) => number[],
  payloadBytes: number,
): Promise<{ resultSha: string; maxErr: number; refSeconds: number; memPeak: number }> {
  let t = performance.now();
  let inputs: Float32Array[] | null = [];
  for (let k = 1; k <= K; k++) {
    const values = new Float32Array(params);
    let at = 0;
    for (const tv of syntheticTensors(shapes, k)) {
      const n = elementCount(tv.shape);
      tv.read(0, values.subarray(at, at + n));
      at += n;
    }
    inputs.push(values);
  }
  let result: Float32Array | null = new Float32Array(params);
  say(`generated ${K} updates in memory in ${((performance.now() - t) / 1000).toFixed(1)} s (not measured)`);
  const offsets = new Map<string, number>();
  let at = 0;
  for (const x of tensors) {
    offsets.set(x.name, at);
    at += x.length;
  }
  const memReaders = inputs.map((values, k) => ({
    id: agentName(k + 1),
    weight: sampleCount(k + 1),
    read: async (name: string, start: number, out: Float32Array) =>
      out.set(values.subarray(offsets.get(name)! + start, offsets.get(name)! + start + out.length)),
  }));
  const into = (name: string, start: number, values: Float32Array) => result!.set(values, offsets.get(name)! + start);
  const memcpyRow = row(`memcpy roofline: each update's ${(payloadBytes / 1e6).toFixed(0)} MB copied once into another buffer`);
  const simdRow = row('FedAvg arithmetic, updates in memory (WebAssembly SIMD kernels)');
  const jsRow = row('FedAvg arithmetic, updates in memory (plain JavaScript fallback)');
  const dst = new Uint8Array(result.buffer);
  for (let r = 0; r < repeat; r++) {
    t = performance.now();
    for (const values of inputs) dst.set(new Uint8Array(values.buffer));
    memcpyRow.push((performance.now() - t) / 1000);
    t = performance.now();
    await fedAvgStreamed(memReaders, tensors, into, 1 << 14);
    simdRow.push((performance.now() - t) / 1000);
  }
  process.env.FEDLINE_NO_SIMD = '1';
  t = performance.now();
  await fedAvgStreamed(memReaders, tensors, into, 1 << 14);
  jsRow.push((performance.now() - t) / 1000);
  delete process.env.FEDLINE_NO_SIMD;
  await fedAvgStreamed(memReaders, tensors, into, 1 << 14); // the result checked below is the SIMD one

  // float64 reference, computed differently: normalised weights, clients in reverse order.
  t = performance.now();
  const totalWeight = memReaders.reduce((s, r) => s + r.weight, 0);
  const norm = memReaders.map((r) => r.weight / totalWeight);
  let maxErr = 0;
  for (let i = 0; i < params; i++) {
    let ref = 0;
    for (let k = K - 1; k >= 0; k--) ref += norm[k]! * inputs[k]![i]!;
    const err = Math.abs(result[i]! - ref) / Math.max(1, Math.abs(ref));
    if (err > maxErr) maxErr = err;
  }
  const refSeconds = (performance.now() - t) / 1000;
  const resultSha = createHash('sha256').update(new Uint8Array(result.buffer)).digest('hex');
  const memPeak = memoryOf('self')?.peakMiB ?? NaN;
  // Free the 10 updates before the file part: it must not count them in its memory.
  inputs = null;
  result = null;
  memReaders.length = 0;
  (globalThis as { gc?: () => void }).gc?.();
  return { resultSha, maxErr, refSeconds, memPeak };
}

/** The aggregator's path: spool files in the page cache -> FedAvg -> new model version. Returns the SHA-256 of the last model's weights. */
async function aggregatorPath(tensors: Tensors, row: (what: string) => number[]): Promise<string> {
  const store = new FsModelStore(join(root, 'models'));
  const spool = new UpdateSpool(join(root, 'spool'));
  let t = performance.now();
  const base = await writeSyntheticModel(store, shapes, 0);
  const infos = await writeUpdates(spool);
  say(`wrote the base model and ${K} spooled updates in ${((performance.now() - t) / 1000).toFixed(1)} s (not measured)`);
  // The page cache holds a just-received round's updates: read each once, as the receiving did.
  for (const u of infos) {
    const fh = await open(join(spool.root, 'r1', `${u.agent}.flb`), 'r');
    const b = Buffer.allocUnsafeSlow(8 << 20);
    for (let pos = 0; pos < u.bytes; pos += b.byteLength) await fh.read(b, 0, Math.min(b.byteLength, u.bytes - pos), pos);
    await fh.close();
  }
  const foldRow = row('FedAvg, aggregator path: spool files -> block readers -> fold');
  const pathRow = row('  ... and the new model version written, hashed (SHA-256) and fsynced');
  let version = 0;
  for (let r = 0; r < repeat; r++) {
    let readers = await spool.openReaders(1, infos);
    t = performance.now();
    await fedAvgStreamed(readers, tensors, () => undefined);
    foldRow.push((performance.now() - t) / 1000);
    await Promise.all(readers.map((x) => x.close()));

    readers = await spool.openReaders(1, infos);
    const baseValues = await store.openValues(0);
    t = performance.now();
    const writer = await store.createVersion({ ...(await store.readHeader(0)).header.meta, version: ++version, round: 1 }, base.tensors);
    const builder = new ModelBuilder(
      writer,
      tensors.map((x) => x.name),
      baseValues,
    );
    await fedAvgStreamed(readers, tensors, builder.sink);
    await builder.finish();
    await writer.commit();
    pathRow.push((performance.now() - t) / 1000);
    await Promise.all(readers.map((x) => x.close()));
    await baseValues.close();
  }
  const weights = await readFile(join(store.dir(version), 'weights.bin'));
  return createHash('sha256').update(weights).digest('hex');
}

/** Resets the process's peak RSS (VmHWM) where Linux allows it; false when it could not. */
function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** Every strategy over the same spooled updates, as the aggregator runs it (norm screen off: the strategy alone). */
async function compareStrategies(names: readonly string[], inputBytes: number): Promise<void> {
  if (names.length === 0) return;
  const store = new FsModelStore(join(root, 'strategy-models'));
  const spool = new UpdateSpool(join(root, 'strategy-spool'));
  await writeSyntheticModel(store, shapes, 0);
  const infos = await writeUpdates(spool);
  const config = parseConfig(
    aggregatorConfigSchema,
    { federation: 'bench', mqtt: { url: 'mqtt://127.0.0.1:1' }, stateDir: root, agents: ['a'], rounds: 1, task: {}, model: { classes: ['A', 'B'] } },
    'bench aggregator config',
  );
  const results: { strategy: string; seconds: number; mbPerSecond: number; peakRssMiB: number; rssBeforeMiB: number }[] = [];
  for (const name of names) {
    const strategy = createStrategy({ ...config, strategy: name, maxUpdateNormRatio: null, maxUpdateNorm: null }, silentLogger());
    const seconds: number[] = [];
    let peak = 0;
    let before = 0;
    for (let r = 0; r < repeat; r++) {
      const readers = await spool.openReaders(1, infos);
      const base = await store.openTensorReader(0);
      (globalThis as { gc?: () => void }).gc?.();
      before = memoryOf('self')?.rssMiB ?? NaN;
      const reset = resetPeakRss();
      const t = performance.now();
      const out = await strategy.aggregate({
        round: 1,
        federated: shapes,
        results: readers,
        failures: [],
        base,
        minClients: 1,
        output: () => undefined,
      });
      seconds.push((performance.now() - t) / 1000);
      if (out.kind !== 'weights') throw new Error(`${name} kept the model: ${out.reason}`);
      peak = Math.max(peak, reset ? (memoryOf('self')?.peakMiB ?? NaN) : NaN);
      await Promise.all([...readers, base].map((x) => x.close()));
    }
    results.push({ strategy: name, seconds: best(seconds), mbPerSecond: inputBytes / 1e6 / best(seconds), peakRssMiB: peak, rssBeforeMiB: before });
  }
  say('');
  say(`strategies on the aggregator path (${K} spooled updates, ${(inputBytes / 1e6).toFixed(0)} MB in all; best of ${repeat}; norm screen off):`);
  say(`${'strategy'.padEnd(16)} ${'best s'.padStart(8)} ${'MB/s'.padStart(8)} ${'peak RSS MiB'.padStart(13)} ${'RSS before'.padStart(11)}`);
  for (const r of results) {
    say(
      `${r.strategy.padEnd(16)} ${r.seconds.toFixed(2).padStart(8)} ${r.mbPerSecond.toFixed(0).padStart(8)} ${r.peakRssMiB.toFixed(0).padStart(13)} ${r.rssBeforeMiB.toFixed(0).padStart(11)}`,
    );
  }
  say('peak RSS: VmHWM reset before each run (the spool files sit in the page cache, not in RSS); it stays near RSS before whatever the model size: O(blocks)');
  if (args.json) writeFileSync(args.json, JSON.stringify({ updates: K, params, inputBytes, results }, null, 2) + '\n');
}

function report(rows: Row[], inputBytes: number, memory: Awaited<ReturnType<typeof inMemory>>, fileSha: string): void {
  const { maxErr, refSeconds, resultSha, memPeak } = memory;
  const roof = inputBytes / best(rows[0]!.seconds);
  say('');
  say(`${'what'.padEnd(86)} ${'GB'.padStart(5)} ${'best s'.padStart(7)} ${'GB/s'.padStart(6)} ${'x roofline'.padStart(10)}   (runs, s)`);
  for (const r of rows) {
    const rate = inputBytes / best(r.seconds);
    say(
      `${r.what.padEnd(86)} ${(inputBytes / GB).toFixed(2).padStart(5)} ${best(r.seconds).toFixed(2).padStart(7)} ${(rate / GB).toFixed(2).padStart(6)} ${(rate / roof).toFixed(2).padStart(10)}   (${r.seconds.map((x) => x.toFixed(2)).join(', ')})`,
    );
  }
  const ratio = inputBytes / best(rows[1]!.seconds) / roof;
  const ratioPath = inputBytes / best(rows[3]!.seconds) / roof;
  say('');
  say(
    `FedAvg / memcpy roofline (goal >= 0.5): as the aggregator runs it, updates in the page cache, reads overlapping the arithmetic: ${ratioPath.toFixed(2)} (${ratioPath >= 0.5 ? 'met' : 'MISSED'}); updates in this process's memory, each block copied into the kernels' memory and folded on one thread: ${ratio.toFixed(2)} (${ratio >= 0.5 ? 'met' : 'MISSED'})`,
  );
  say(
    `float64 reference: max |FedAvg - reference| / max(1, |reference|) = ${maxErr.toExponential(2)} over ${params} values (goal <= 1e-6: ${maxErr <= 1e-6 ? 'met' : 'MISSED'}; ${refSeconds.toFixed(1)} s)`,
  );
  say(
    `the aggregator path's model equals the in-memory result bit for bit: ${fileSha === resultSha ? 'yes' : 'NO'} (SHA-256 of the weights ${fileSha.slice(0, 16)}…)`,
  );
  say(
    `peak RSS of this process: ${memPeak.toFixed(0)} MiB during the in-memory part (the ${K} updates + one model-sized buffer); the aggregator path holds blocks only`,
  );
}
main()
  .catch((err: Error) => {
    process.stderr.write(`bench:aggregate failed: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    if (!args.dir) rmSync(root, { recursive: true, force: true });
  });
