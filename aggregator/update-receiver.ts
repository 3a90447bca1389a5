import type { AcceptResult, Chunk, ChunkGeometry } from '../shared/bundle/chunking.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { FileReassembler } from '../shared/bundle/file-reassembler.js';
import type { BundleHeader } from '../shared/bundle/tensor-bundle.js';
import { UpdateStreamVerifier, type UpdateExpectation } from './verify-update.js';

export interface UpdateReceiverOptions extends ChunkGeometry {
  agent: string;
  upload: string;
  /** The spool file the chunks are written into. */
  path: string;
  maxBundleBytes: number;
  expect: UpdateExpectation;
}

/**
 * One agent's update upload as it arrives: chunks go straight into a spool file (FileReassembler)
 * and stream, in order, through the verifier, so that when the last chunk lands the SHA-256 is
 * known and every check but the SHA comparison is done. Memory: a chunk, whatever the update's size.
 */
export class UpdateReceiver {
  readonly agent: string;
  readonly upload: string;
  private readonly file: FileReassembler;
  private readonly verifier: UpdateStreamVerifier;
  /** The SHA-256 the agent announced in update-done (null until it comes). */
  expectedSha: string | null = null;
  private reportedStored = 0;

  constructor(o: UpdateReceiverOptions) {
    this.agent = o.agent;
    this.upload = o.upload;
    this.verifier = new UpdateStreamVerifier(o.bundleBytes, o.expect);
    this.file = new FileReassembler({
      path: o.path,
      total: o.total,
      bundleBytes: o.bundleBytes,
      chunkBytes: o.chunkBytes,
      maxBundleBytes: o.maxBundleBytes,
      onInOrder: (bytes, offset) => this.verifier.push(bytes, offset),
    });
  }

  get path(): string {
    return this.file.path;
  }

  get bundleBytes(): number {
    return this.file.bundleBytes;
  }

  get complete(): boolean {
    return this.file.complete;
  }

  get receivedChunks(): number {
    return this.file.receivedChunks;
  }

  /** Content already known to be bad (header, manifest, a NaN): the upload can be refused now. */
  get failure(): FedlineError | null {
    return this.verifier.failure;
  }

  matches(g: ChunkGeometry): boolean {
    return this.file.matches(g);
  }

  accept(chunk: Chunk): AcceptResult {
    return this.file.accept(chunk);
  }

  missing(limit: number): number[] {
    return this.file.missing(limit);
  }

  /** The stored-chunk count, reported now (the flow-control credit changed): null once every chunk is in. */
  progressNow(): number | null {
    if (this.file.complete) return null;
    this.reportedStored = this.file.receivedChunks;
    return this.reportedStored;
  }

  /** The stored-chunk count when a flow-control progress report is due (every `step` chunks), else null. */
  progressDue(step: number): number | null {
    const stored = this.file.receivedChunks;
    if (step <= 0 || stored - this.reportedStored < step || this.file.complete) return null;
    this.reportedStored = stored;
    return stored;
  }

  /** Every chunk in and the SHA-256 announced: finish() can run. */
  get ready(): boolean {
    return this.file.complete && this.expectedSha !== null;
  }

  /**
   * Check the SHA-256 and the verifier's verdict, make the file durable and close it. Returns the
   * verified header. Throws a FedlineError naming the problem (then discard()).
   */
  async finish(): Promise<{ header: BundleHeader<ReturnType<UpdateStreamVerifier['finish']>['header']['meta']>; payloadStart: number; sha256: string }> {
    const digest = this.file.digest;
    if (digest !== null && digest !== this.expectedSha) {
      // Checked first: corrupted bytes would also make the content checks fail, for the wrong reason.
      throw new FedlineError(ErrorCodes.BUNDLE_SHA, `bundle SHA-256 mismatch: got ${digest}, announced ${this.expectedSha}`, {
        actual: digest,
        expected: this.expectedSha,
      });
    }
    const verified = this.verifier.finish();
    await this.file.finish(this.expectedSha!);
    return { ...verified, sha256: this.expectedSha! };
  }

  discard(): void {
    this.file.discard();
  }
}
