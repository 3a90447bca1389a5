import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { BlockSink } from '../shared/fl/fedavg.js';
import { elementCount, type TensorSpec } from '../shared/bundle/tensor-bundle.js';
import type { VersionWriter } from './version-writer.js';
import type { BaseValues } from './update-spool.js';

const COPY_BLOCK_ELEMENTS = 1 << 18;

/**
 * Builds the next global model version as a stream: the strategy's averaged blocks go straight
 * into the new version's weights file, and tensors the round did not federate (a frozen feature
 * extractor) are copied from the base version in between, in the model's tensor order. Nothing
 * model-sized is held in memory.
 */
export class ModelBuilder {
  private readonly writer: VersionWriter;
  private readonly specs: readonly TensorSpec[];
  private readonly federated: ReadonlySet<string>;
  private readonly base: BaseValues;
  /** Index of the tensor being written and how many of its values are written. */
  private tensor = 0;
  private done = 0;
  private scratch: Float32Array | null = null;

  constructor(writer: VersionWriter, federated: readonly string[], base: BaseValues) {
    this.writer = writer;
    this.specs = writer.specs;
    this.federated = new Set(federated);
    this.base = base;
  }

  /** The sink a strategy writes the federated tensors to. */
  readonly sink: BlockSink = async (name, start, values) => {
    if (!this.federated.has(name)) throw new FedlineError(ErrorCodes.MODEL_STORE, `the strategy wrote tensor "${name}", which this round does not federate`);
    await this.copyBaseUntil(name);
    const spec = this.specs[this.tensor]!;
    if (spec.name !== name || start !== this.done) {
      throw new FedlineError(
        ErrorCodes.MODEL_STORE,
        `the strategy wrote ${name}[${start}..] but the model is written in order and expects ${spec.name}[${this.done}..]`,
      );
    }
    await this.writeValues(values);
  };

  /** Write what is left (base tensors after the last federated one); every federated tensor must be complete. */
  async finish(): Promise<void> {
    await this.copyBaseUntil(null);
  }

  private async writeValues(values: Float32Array): Promise<void> {
    const spec = this.specs[this.tensor]!;
    const count = elementCount(spec.shape);
    if (this.done + values.length > count)
      throw new FedlineError(ErrorCodes.MODEL_STORE, `tensor "${spec.name}" got ${this.done + values.length} values, it has ${count}`);
    await this.writer.write(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    this.done += values.length;
    if (this.done === count) {
      this.tensor++;
      this.done = 0;
    }
  }

  /** Copy non-federated tensors from the base up to tensor `name` (or to the end). */
  private async copyBaseUntil(name: string | null): Promise<void> {
    while (this.tensor < this.specs.length) {
      const spec = this.specs[this.tensor]!;
      if (spec.name === name) return;
      if (this.federated.has(spec.name)) {
        if (this.done === 0 && elementCount(spec.shape) === 0) {
          this.tensor++;
          continue;
        }
        throw new FedlineError(
          ErrorCodes.MODEL_STORE,
          `federated tensor "${spec.name}" is incomplete (${this.done} of ${elementCount(spec.shape)} values) when ${name ?? 'the end'} comes`,
        );
      }
      const count = elementCount(spec.shape);
      if (count === 0) {
        this.tensor++;
        continue;
      }
      this.scratch ??= new Float32Array(COPY_BLOCK_ELEMENTS);
      const n = Math.min(COPY_BLOCK_ELEMENTS, count - this.done);
      const block = this.scratch.subarray(0, n);
      await this.base.read(spec.name, this.done, block);
      await this.writeValues(block);
    }
    if (name !== null) throw new FedlineError(ErrorCodes.MODEL_STORE, `tensor "${name}" is not in the model, or was written already`);
  }
}
