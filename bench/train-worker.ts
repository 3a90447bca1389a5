import { createInterface } from 'node:readline';
import { mulberry32 } from '../shared/util/random.js';
import { startCpuBackend, startWasmBackend, type Tf } from '../training/backend.js';
import { BENCH_BATCH, BENCH_CLASSES, BENCH_INPUT, buildBenchModel } from './vgg-bench-model.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * One tfjs backend of `npm run bench:train`, in its own process (tfjs keeps one global backend).
 * Protocol on stdin/stdout, one JSON object a line: it says {ready} after warm-up steps, then
 * answers each {"steps": N} with {"ms": [wall ms per step], "cpuMs": [CPU ms of this process per step]}.
 * usage: node dist/bench/train-worker.js <tensorflow|wasm|cpu>
 */

async function loadBackend(name: string): Promise<{ tf: Tf; detail: string }> {
  if (name === 'tensorflow') {
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
      try {
        const tf = (await import(pkg)) as Tf;
        await tf.ready();
        return { tf, detail: pkg };
      } catch {
        // try the next one
      }
    }
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, 'neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed');
  }
  const tf = (await import('@tensorflow/tfjs')) as Tf;
  tf.env().set('PROD', true);
  if (name === 'wasm') {
    const r = await startWasmBackend(tf);
    if (!r.ok) throw new FedlineError(ErrorCodes.CONFIG_INVALID, r.reason);
    return { tf, detail: '@tensorflow/tfjs-backend-wasm (SIMD, 1 thread) + fedline kernels' };
  }
  if (name === 'cpu') {
    await startCpuBackend(tf);
    return { tf, detail: '@tensorflow/tfjs pure JS + fedline kernels' };
  }
  throw new FedlineError(ErrorCodes.CONFIG_INVALID, `unknown backend ${name}`);
}

async function main(): Promise<void> {
  const name = process.argv[2] ?? '';
  const warmup = Number(process.argv[3] ?? '2');
  const send = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');
  let loaded: { tf: Tf; detail: string };
  try {
    loaded = await loadBackend(name);
  } catch (err) {
    send({ unavailable: (err as Error).message });
    return;
  }
  const { tf } = loaded;
  const model = buildBenchModel(tf);
  const optimizer = tf.train.sgd(0.01);
  const rng = mulberry32(1);
  const n = BENCH_BATCH * BENCH_INPUT[0] * BENCH_INPUT[1] * BENCH_INPUT[2];
  const x = tf.tensor4d(
    Float32Array.from({ length: n }, () => rng() * 2 - 1),
    [BENCH_BATCH, ...BENCH_INPUT],
  );
  const y = tf.oneHot(
    tf.tensor1d(
      Int32Array.from({ length: BENCH_BATCH }, (_, i) => i % BENCH_CLASSES),
      'int32',
    ),
    BENCH_CLASSES,
  );
  const vars = model.trainableWeights.map((w) => (w as unknown as { val: import('@tensorflow/tfjs').Variable }).val);
  const cpuNow = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  let lastCpuMs = 0;
  const step = (): number => {
    const c0 = cpuNow();
    const t0 = performance.now();
    tf.tidy(() => {
      const cost = optimizer.minimize(
        () => tf.losses.softmaxCrossEntropy(y, model.apply(x, { training: true }) as import('@tensorflow/tfjs').Tensor2D) as import('@tensorflow/tfjs').Scalar,
        true,
        vars,
      );
      cost?.dataSync();
    });
    const wall = performance.now() - t0;
    lastCpuMs = cpuNow() - c0;
    return wall;
  };
  for (let i = 0; i < warmup; i++) step();
  send({ ready: true, backend: tf.getBackend(), detail: loaded.detail, params: model.countParams() });
  for await (const line of createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line) as { steps?: number; quit?: boolean };
    if (cmd.quit) break;
    const ms: number[] = [];
    const cpuMs: number[] = [];
    for (let i = 0; i < (cmd.steps ?? 1); i++) {
      ms.push(step());
      cpuMs.push(lastCpuMs);
    }
    send({ ms, cpuMs, tensors: tf.memory().numTensors });
  }
  process.exit(0);
}

main().catch((err: Error) => {
  process.stdout.write(JSON.stringify({ unavailable: err.message }) + '\n');
  process.exit(1);
});
