import type { BackendPreference } from '../shared/config/service-config.js';
import type { Logger } from '../shared/util/logger.js';
import { installFastCpuKernels } from './cpu-kernels.js';
import { installWasmTrainingKernels } from './wasm-kernels.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/** The tfjs namespace, whichever package provided it (tfjs-node-gpu and tfjs-node re-export it). */
export type Tf = typeof import('@tensorflow/tfjs');

export type { BackendPreference } from '../shared/config/service-config.js';

export interface TfRuntime {
  tf: Tf;
  /** tfjs backend name: `tensorflow` (native, CPU or CUDA), `wasm` (WebAssembly, SIMD) or `cpu` (pure JavaScript). */
  backend: string;
  /** The package that supplied it. */
  packageName: string;
  /** True when the native libtensorflow backend runs (fast); false for the WebAssembly and JavaScript fallbacks. */
  native: boolean;
}

const NATIVE_PACKAGES = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const;
const WASM_PACKAGE = '@tensorflow/tfjs-backend-wasm';

export const NATIVE_INSTALL_HINT =
  'install the native backend for much faster training: `npm install @tensorflow/tfjs-node-gpu` on a CUDA box or ' +
  '`npm install @tensorflow/tfjs-node` on a CPU box. Its install downloads libtensorflow from Google storage; ' +
  'where that is blocked, point TFJS_NODE_CDN_STORAGE (or TFJS_NODE_BASE_URI) at a mirror before `npm install`.';

let cached: { preference: BackendPreference; runtime: Promise<TfRuntime> } | null = null;

/**
 * tfjs-layers keeps the topologically sorted graph of the last N executions in a global LRU
 * cache (default 100). An agent builds a fresh model every round, so each entry pins a dead
 * model's layer objects until it falls out: memory then climbs for ~50 rounds before it levels
 * off. One model runs at a time here; a small cache keeps the plateau low and reached early.
 */
const GRAPH_CACHE_ENTRIES = 8;

function tuneTf(tf: Tf): void {
  tf.env().set('TOPOLOGICAL_SORT_CACHE_MAX_ENTRIES', GRAPH_CACHE_ENTRIES);
}

async function tryImport(name: string): Promise<Tf | null> {
  try {
    // A variable specifier: these packages are optional and usually absent.
    const mod = (await import(name)) as Tf & { default?: Tf };
    return (mod.default && typeof mod.default.tensor === 'function' ? mod.default : mod) as Tf;
  } catch {
    return null;
  }
}

/**
 * The WebAssembly backend with fedline's training kernels (training/wasm-kernels.ts), or the
 * reason it cannot start. Its .wasm binaries ship inside the npm package: nothing is downloaded.
 */
export async function startWasmBackend(tf: Tf): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    await import(WASM_PACKAGE);
  } catch (err) {
    return { ok: false, reason: `${WASM_PACKAGE} cannot be loaded: ${(err as Error).message}` };
  }
  try {
    if (!(await tf.setBackend('wasm'))) return { ok: false, reason: 'the WebAssembly backend failed to initialise' };
    await tf.ready();
    installWasmTrainingKernels(tf);
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `the WebAssembly backend failed to initialise: ${(err as Error).message}` };
  }
}

/** The pure-JavaScript backend with fedline's faster gradient kernels. */
export async function startCpuBackend(tf: Tf): Promise<void> {
  await tf.setBackend('cpu');
  await tf.ready();
  installFastCpuKernels(tf);
}

/**
 * Load TensorFlow.js with the best backend available, best first: tfjs-node-gpu (CUDA),
 * tfjs-node (native CPU), WebAssembly (XNNPACK, SIMD, one thread), pure JavaScript. `preference`
 * forces one. Once per process: tfjs keeps global state, and mixing two tfjs copies in one process
 * breaks tensors (a later call with another preference gets the first runtime, and says so).
 */
export function loadTf(preference: BackendPreference = 'auto', log?: Logger): Promise<TfRuntime> {
  if (cached) {
    if (cached.preference !== preference) {
      void cached.runtime.then((r) => log?.info({ backend: r.backend, requested: preference }, 'tfjs is already loaded in this process; keeping its backend'));
    }
    return cached.runtime;
  }
  const runtime = (async (): Promise<TfRuntime> => {
    if (preference === 'auto' || preference === 'tensorflow') {
      for (const name of NATIVE_PACKAGES) {
        const tf = await tryImport(name);
        if (tf) {
          await tf.ready();
          tuneTf(tf);
          log?.info({ backend: tf.getBackend(), package: name }, 'tfjs backend ready (native)');
          return { tf, backend: tf.getBackend(), packageName: name, native: true };
        }
      }
      if (preference === 'tensorflow') {
        throw new FedlineError(
          ErrorCodes.BACKEND,
          `training.backend is "tensorflow" but neither ${NATIVE_PACKAGES.join(' nor ')} can be loaded; ${NATIVE_INSTALL_HINT}`,
        );
      }
    }
    const tf = (await import('@tensorflow/tfjs')) as Tf;
    // PROD silences tfjs' own console advice (we log our own) and skips debug-only checks.
    tf.env().set('PROD', true);
    tuneTf(tf);
    if (preference === 'auto' || preference === 'wasm') {
      const wasm = await startWasmBackend(tf);
      if (wasm.ok) {
        if (preference === 'auto') {
          log?.warn({ backend: 'wasm' }, `tfjs is using the WebAssembly backend (one CPU thread, several times slower than native); ${NATIVE_INSTALL_HINT}`);
        } else log?.info({ backend: 'wasm' }, 'tfjs backend ready (WebAssembly, as configured)');
        return { tf, backend: 'wasm', packageName: WASM_PACKAGE, native: false };
      }
      if (preference === 'wasm') throw new FedlineError(ErrorCodes.BACKEND, `training.backend is "wasm" but ${wasm.reason}`);
      log?.warn({ reason: wasm.reason }, 'the WebAssembly backend is not available');
    }
    await startCpuBackend(tf);
    if (preference === 'auto') log?.warn({ backend: 'cpu' }, `tfjs is using the slow pure-JavaScript CPU backend; ${NATIVE_INSTALL_HINT}`);
    else log?.info({ backend: 'cpu' }, 'tfjs backend ready (pure JavaScript, as configured)');
    return { tf, backend: 'cpu', packageName: '@tensorflow/tfjs', native: false };
  })();
  cached = { preference, runtime };
  return runtime;
}
