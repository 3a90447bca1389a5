import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { clientVariate } from '../shared/fl/scaffold.js';
import { bundleTensors, decodeBundle, encodeBundle, type NamedTensor } from '../shared/bundle/tensor-bundle.js';
import { valuesAsReceived } from '../shared/bundle/encoded-update.js';
import { controlMetaSchema, type RoundAnnouncement } from '../shared/protocol/messages.js';
import { describeError, ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { fsyncDir, writeFileAtomic } from '../shared/util/fs-atomic.js';
import type { Logger } from '../shared/util/logger.js';
import { resolveFederated } from '../shared/fl/federated-set.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { Transport } from '../shared/transport/transport.js';
import { downloadControl, type DownloadOptions } from './model-downlink.js';
import type { GlobalModel, ScaffoldControl, TrainResult } from '../training/trainer.js';

/** The header of a stored client variate: the run and the round whose training made it. */
const clientVariateMetaSchema = z.object({ kind: z.literal('client-variate'), runId: z.string(), round: z.number().int().nonnegative() });
type ClientVariateMeta = z.infer<typeof clientVariateMetaSchema>;

type Variate = Map<string, Float32Array>;

/**
 * SCAFFOLD on the agent (shared/fl/scaffold.ts has the math): the server variate c arrives with the
 * round (announcement `control`, downloaded by the caller), the agent's own c_i is kept in
 * <stateDir>/scaffold/ as a tensor bundle, so a restart continues with it:
 *   ci.flb          the committed c_i (meta: runId, round that made it)
 *   ci-pending.flb  c_i+ of the round whose update is on its way: it becomes ci.flb only once the
 *                   aggregator accepts the update, because only then does the server's c count
 *                   Δc_i (a refused or late update leaves both sides as they were).
 * A c_i of another federation run, or whose tensors do not match the round's, is not used (c_i = 0).
 * An agent that misses rounds keeps its c_i as it was (the paper's partial participation: c_i
 * changes only when the client trains); the server's c meanwhile moves with the others' changes.
 * Without a state folder the variates live in memory only.
 */
export class ScaffoldClient {
  private readonly dir: string | null;
  private readonly log: Logger;
  private memory: { committed: { meta: ClientVariateMeta; c: Variate } | null; pending: { meta: ClientVariateMeta; c: Variate } | null } = {
    committed: null,
    pending: null,
  };

  private readonly link: { transport: Transport; topics: Topics } | null;

  /** `link`: where c is downloaded from (null: only prepare() with a bundle in hand). */
  constructor(stateDir: string | null, log: Logger, link: { transport: Transport; topics: Topics } | null = null) {
    this.dir = stateDir ? join(stateDir, 'scaffold') : null;
    this.log = log;
    this.link = link;
  }

  /** A round's variates: none unless it is a SCAFFOLD training round; c downloaded when announced (absent: c = 0). */
  async forRound(ann: RoundAnnouncement, model: GlobalModel, options: DownloadOptions): Promise<{ control: ScaffoldControl | null; downloadedBytes: number }> {
    if (!ann.task.scaffold || ann.kind !== 'train') return { control: null, downloadedBytes: 0 };
    if (ann.control && !this.link) throw new RangeError('ScaffoldClient: no transport to download the control variate');
    const bundle = ann.control ? await downloadControl(this.link!.transport, this.link!.topics, ann.control, this.log, options) : null;
    const names = model.tensors.map((t) => t.name);
    const control = await this.prepare(ann, model, resolveFederated(ann.task.federated, names, model.meta.headTensors), bundle);
    return { control, downloadedBytes: ann.control?.bytes ?? 0 };
  }

  /** The round's variates: c from the control bundle (null: c = 0), and the committed c_i of this run. */
  async prepare(ann: RoundAnnouncement, model: GlobalModel, federatedNames: readonly string[], controlBundle: Buffer | null): Promise<ScaffoldControl> {
    const specs = model.tensors.filter((t) => federatedNames.includes(t.name));
    const c = controlBundle ? decodeControl(controlBundle, ann, specs) : null;
    // This process's last accepted c_i first (its file may not have been written: a disk problem, alerted).
    const stored = this.memory.committed ?? (await this.read('ci.flb'));
    const ci = stored && stored.meta.runId === ann.runId && matches(stored.c, specs) ? stored.c : null;
    if (stored && !ci)
      this.log.info({ from: stored.meta.runId, round: stored.meta.round }, 'SCAFFOLD: stored c_i is of another run or model; starting from c_i = 0');
    return { c, ci };
  }

  /** After local training: c_i+ = c_i - c + (x - y) / (K η_l), kept as pending until the update is accepted. */
  async keep(ann: RoundAnnouncement, model: GlobalModel, control: ScaffoldControl, result: TrainResult): Promise<void> {
    const base = new Map(model.tensors.map((t) => [t.name, t.data]));
    const next: Variate = new Map();
    for (const t of result.tensors) {
      const x = base.get(t.name)!;
      // y as the aggregator will read it (f16/q8, delta): c_i+ - c_i is then exactly the Δc_i it forms.
      const y = valuesAsReceived(t.data, x, ann.encoding, ann.delta);
      next.set(t.name, clientVariate(x, y, control.c?.get(t.name) ?? null, control.ci?.get(t.name) ?? null, result.steps, ann.task.learningRate));
    }
    const meta: ClientVariateMeta = { kind: 'client-variate', runId: ann.runId, round: ann.round };
    this.memory.pending = { meta, c: next };
    if (!this.dir) return;
    await mkdir(this.dir, { recursive: true });
    const tensors: NamedTensor[] = result.tensors.map((t) => ({ name: t.name, shape: [...t.shape], dtype: 'float32', data: next.get(t.name)! }));
    await writeFileAtomic(join(this.dir, 'ci-pending.flb'), encodeBundle(tensors, meta));
  }

  /** The aggregator's verdict on round `round`'s update: accepted makes the pending c_i+ this agent's c_i; otherwise it is dropped. */
  async settle(runId: string, round: number, accepted: boolean): Promise<void> {
    const pending = this.memory.pending ?? (await this.read('ci-pending.flb'));
    this.memory.pending = null;
    if (!pending || pending.meta.runId !== runId || pending.meta.round !== round) return;
    if (accepted) this.memory.committed = pending;
    if (!this.dir || !(await exists(join(this.dir, 'ci-pending.flb')))) return;
    if (accepted) {
      await rename(join(this.dir, 'ci-pending.flb'), join(this.dir, 'ci.flb'));
      await fsyncDir(this.dir);
    } else {
      await rm(join(this.dir, 'ci-pending.flb'), { force: true });
    }
  }

  private async read(file: string): Promise<{ meta: ClientVariateMeta; c: Variate } | null> {
    if (!this.dir) return file === 'ci.flb' ? this.memory.committed : this.memory.pending;
    let bytes: Buffer;
    try {
      bytes = await readFile(join(this.dir, file));
    } catch {
      return null;
    }
    try {
      const decoded = decodeBundle(bytes, clientVariateMetaSchema);
      return { meta: decoded.header.meta, c: new Map(bundleTensors(decoded).map((t) => [t.name, t.data])) };
    } catch (err) {
      this.log.warn({ file, code: ErrorCodes.MODEL_STORE }, `SCAFFOLD: unreadable ${file} (${describeError(err).message}); starting from c_i = 0`);
      return null;
    }
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function matches(c: Variate, specs: readonly NamedTensor[]): boolean {
  return specs.every((s) => c.get(s.name)?.length === s.data.length);
}

/** c from the control bundle the round announced: its version must be the base's, every federated tensor there at its size. */
function decodeControl(bundle: Buffer, ann: RoundAnnouncement, specs: readonly NamedTensor[]): Variate {
  try {
    const decoded = decodeBundle(bundle, controlMetaSchema);
    if (decoded.header.meta.version !== ann.base.version)
      throw new Error(`it is for model version ${decoded.header.meta.version}, the round's base is ${ann.base.version}`);
    const c = new Map(bundleTensors(decoded).map((t) => [t.name, t.data]));
    if (!matches(c, specs)) throw new Error("its tensors do not match the round's federated tensors");
    return c;
  } catch (err) {
    throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `SCAFFOLD control variate of round ${ann.round}: ${describeError(err).message}`);
  }
}
