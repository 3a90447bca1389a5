import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { allFinite } from '../shared/fl/fedavg.js';
import { simdKernels, type SimdKernels } from '../shared/fl/fedavg-simd.js';
import { updateMetaSchema, type UpdateMeta } from '../shared/protocol/messages.js';
import { bundlePrefixBytes, decodeBundleHeader, elementCount, type BundleHeader, type DecodedBundle, type TensorSpec } from '../shared/bundle/tensor-bundle.js';
import { encodedBytes, type ValueDtype } from '../shared/bundle/value-encodings.js';

type DecodedUpdateMeta = ReturnType<typeof updateMetaSchema.parse>;

export interface UpdateExpectation {
  round: number;
  agent: string;
  baseVersion: number;
  /** The tensors the round federates, as the global model has them (name, shape). */
  tensors: readonly Pick<TensorSpec, 'name' | 'shape'>[];
  /** The value encoding the round asked for (tensor dtype). Default float32. */
  dtype?: ValueDtype;
  /** Whether the round asked for differences to the base model. Default false. */
  delta?: boolean;
  /** Most samples this agent may claim (its registered count or the federation's cap); null: no limit. */
  maxSamples?: number | null;
}

/** Bytes an update's header may take above its tensors: tensor specs and the update's meta (metrics) need far less. */
export const UPDATE_HEADER_SLACK_BYTES = 1024 * 1024;

/**
 * The largest update bundle the round's model allows: its federated tensors in the round's value
 * encoding (q8 at its most expensive, one scale per value), 4-byte alignment per tensor, and the
 * header slack. An upload that declares more is refused at its first chunk (FL_MSG_OVERSIZE)
 * before anything is spooled: a 94 KB model cannot be answered with a 2 GiB declaration.
 */
export function derivedMaxUpdateBytes(tensors: readonly Pick<TensorSpec, 'shape'>[], dtype: ValueDtype = 'float32'): number {
  let payload = 0;
  for (const t of tensors) payload += Math.ceil(encodedBytes(dtype, elementCount(t.shape), 1) / 4) * 4;
  return 8 + UPDATE_HEADER_SLACK_BYTES + 256 * tensors.length + payload;
}

/**
 * Check an update's header before its values may enter the average: its meta is for this round,
 * agent and base version; it carries exactly the federated tensors with the global model's shapes,
 * in the encoding the round asked for; the sample count is a positive integer. Throws a
 * FedlineError whose code names the failed check.
 */
export function verifyUpdateHeader(header: BundleHeader<DecodedUpdateMeta>, expect: UpdateExpectation): void {
  const meta = header.meta;
  const dtype = expect.dtype ?? 'float32';
  if (meta.round !== expect.round || meta.agent !== expect.agent) {
    throw new FedlineError(
      ErrorCodes.UPDATE_MANIFEST,
      `update meta says round ${meta.round} from "${meta.agent}" but arrived as round ${expect.round} from "${expect.agent}"`,
    );
  }
  if (meta.baseVersion !== expect.baseVersion) {
    throw new FedlineError(
      ErrorCodes.WRONG_BASE,
      `update was trained from model version ${meta.baseVersion}; round ${expect.round} is based on version ${expect.baseVersion}`,
    );
  }
  if (meta.delta !== (expect.delta ?? false)) {
    throw new FedlineError(
      ErrorCodes.UPDATE_MANIFEST,
      meta.delta
        ? `update holds differences to the base model; round ${expect.round} asked for the weights themselves`
        : `update holds the weights themselves; round ${expect.round} asked for differences to the base model`,
    );
  }
  const got = new Map(header.tensors.map((t) => [t.name, t]));
  const missing = expect.tensors.filter((t) => !got.has(t.name)).map((t) => t.name);
  const extra = header.tensors.filter((t) => !expect.tensors.some((e) => e.name === t.name)).map((t) => t.name);
  if (missing.length || extra.length) {
    throw new FedlineError(
      ErrorCodes.UPDATE_MANIFEST,
      `update tensors do not match the round's federated set${missing.length ? `; missing: ${missing.slice(0, 5).join(', ')}` : ''}${extra.length ? `; unexpected: ${extra.slice(0, 5).join(', ')}` : ''}`,
    );
  }
  for (const e of expect.tensors) {
    const t = got.get(e.name)!;
    if (t.dtype !== dtype || t.shape.length !== e.shape.length || t.shape.some((d, i) => d !== e.shape[i])) {
      throw new FedlineError(
        ErrorCodes.UPDATE_MANIFEST,
        `tensor "${e.name}" is ${t.dtype}[${t.shape.join(', ')}], the global model has ${dtype}[${e.shape.join(', ')}]`,
      );
    }
  }
  if (!Number.isSafeInteger(meta.sampleCount) || meta.sampleCount <= 0) {
    throw new FedlineError(ErrorCodes.UPDATE_SAMPLES, `sample count ${meta.sampleCount} is not a positive integer`);
  }
  if (expect.maxSamples != null && meta.sampleCount > expect.maxSamples) {
    // FedAvg weights by sample count: an inflated count would let one site outweigh the others.
    throw new FedlineError(
      ErrorCodes.UPDATE_SAMPLES,
      `update claims ${meta.sampleCount} training samples; at most ${expect.maxSamples} are allowed for ${expect.agent}`,
    );
  }
}

const FINITE_BLOCK = 1 << 16;
let finiteKernel: { k: SimdKernels; bytes: Uint8Array } | null | undefined;

/**
 * True when every float32 value in `bytes` (a multiple of 4 bytes, any alignment) is finite. The
 * bytes are copied into an aligned buffer (WebAssembly memory when SIMD is there) and scanned four
 * values per instruction: several times the speed of a JavaScript loop, on every byte received.
 */
function allFiniteF32Bytes(bytes: Uint8Array): boolean {
  if (finiteKernel === undefined) {
    const k = simdKernels(FINITE_BLOCK * 4);
    finiteKernel = k ? { k, bytes: new Uint8Array(k.memory.buffer, 0, FINITE_BLOCK * 4) } : null;
  }
  const count = bytes.byteLength / 4;
  for (let done = 0; done < count;) {
    const n = Math.min(count - done, FINITE_BLOCK);
    const piece = bytes.subarray(done * 4, (done + n) * 4);
    if (finiteKernel) {
      finiteKernel.bytes.set(piece);
      const vec = n & ~3;
      if (finiteKernel.k.nonfinite(0, vec) !== 0) return false;
      if (vec < n && !allFinite(new Float32Array(finiteKernel.bytes.buffer, vec * 4, n - vec))) return false;
    } else {
      const values = piece.byteOffset % 4 === 0 ? new Float32Array(piece.buffer, piece.byteOffset, n) : new Float32Array(Uint8Array.from(piece).buffer);
      if (!allFinite(values)) return false;
    }
    done += n;
  }
  return true;
}

/** Finite check of one tensor's encoded bytes, fed in order in pieces of any size. */
class FiniteChecker {
  readonly spec: TensorSpec;
  private readonly count: number;
  /** Bytes of this tensor seen so far. */
  private pos = 0;
  private readonly carry = new Uint8Array(4);
  private carried = 0;

  constructor(spec: TensorSpec) {
    this.spec = spec;
    this.count = elementCount(spec.shape);
  }

  /** False when a NaN or ±Infinity is in these bytes. */
  feed(bytes: Uint8Array): boolean {
    const dtype = this.spec.dtype;
    const ok = dtype === 'float32' ? this.feedF32(bytes) : dtype === 'float16' ? this.feedF16(bytes) : this.feedQ8(bytes);
    this.pos += bytes.byteLength;
    return ok;
  }

  private feedF32(bytes: Uint8Array): boolean {
    let i = 0;
    if (this.carried > 0) {
      while (this.carried < 4 && i < bytes.length) this.carry[this.carried++] = bytes[i++]!;
      if (this.carried < 4) return true;
      this.carried = 0;
      if (!allFinite(new Float32Array(this.carry.buffer, 0, 1))) return false;
    }
    const whole = Math.floor((bytes.length - i) / 4);
    if (!allFiniteF32Bytes(bytes.subarray(i, i + whole * 4))) return false;
    i += whole * 4;
    while (i < bytes.length) this.carry[this.carried++] = bytes[i++]!;
    return true;
  }

  private feedF16(bytes: Uint8Array): boolean {
    // Little-endian halves: the high byte (odd position) holds the exponent; all ones is NaN/±Inf.
    for (let i = (this.pos & 1) === 0 ? 1 : 0; i < bytes.length; i += 2) if ((bytes[i]! & 0x7c) === 0x7c) return false;
    return true;
  }

  private feedQ8(bytes: Uint8Array): boolean {
    const block = this.spec.block!;
    const stride = block + 4;
    let i = 0;
    while (i < bytes.length) {
      const abs = this.pos + i;
      const within = abs % stride;
      if (within < 4) {
        const n = Math.min(4 - within, bytes.length - i);
        for (let k = 0; k < n; k++) this.carry[within + k] = bytes[i + k]!;
        i += n;
        if (within + n === 4 && !allFinite(new Float32Array(this.carry.buffer, 0, 1))) return false;
      } else {
        const blockStart = abs - within;
        const valuesInBlock = Math.min(block, this.count - (blockStart / stride) * block);
        i += Math.max(1, 4 + valuesInBlock - within);
      }
    }
    return true;
  }
}

/**
 * Verification of an update while it streams in, in order (see FileReassembler's onInOrder):
 * the header is checked as soon as its bytes are in (a wrong manifest is refused before the rest
 * arrives), then every value is checked to be finite in the round's encoding. push() never throws;
 * the first problem is kept in `failure`.
 */
export class UpdateStreamVerifier {
  private readonly bundleBytes: number;
  private readonly expect: UpdateExpectation;
  private prefix: Uint8Array = new Uint8Array(8);
  private prefixLength = 0;
  private parsed: { header: BundleHeader<DecodedUpdateMeta>; payloadStart: number } | null = null;
  private checkers: { start: number; end: number; checker: FiniteChecker }[] = [];
  private current = 0;
  private seen = 0;
  private failed: FedlineError | null = null;

  constructor(bundleBytes: number, expect: UpdateExpectation) {
    this.bundleBytes = bundleBytes;
    this.expect = expect;
  }

  get failure(): FedlineError | null {
    return this.failed;
  }

  get header(): { header: BundleHeader<DecodedUpdateMeta>; payloadStart: number } | null {
    return this.parsed;
  }

  push(bytes: Uint8Array, offset: number): void {
    if (this.failed) return;
    try {
      if (offset !== this.seen) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `update verifier got bytes at ${offset}, expected ${this.seen}`);
      this.seen += bytes.byteLength;
      let rest = bytes;
      let at = offset;
      while (!this.parsed) {
        // Gather the header (normally all inside the first chunk): 8 bytes say how long it is.
        const need = this.prefixLength < 8 ? 8 : bundlePrefixBytes(this.prefix.subarray(0, this.prefixLength), this.bundleBytes);
        if (this.prefixLength >= need) {
          this.parseHeader();
          break;
        }
        if (rest.byteLength === 0) return;
        if (this.prefix.byteLength < need) {
          const grown = new Uint8Array(need);
          grown.set(this.prefix.subarray(0, this.prefixLength));
          this.prefix = grown;
        }
        const take = Math.min(rest.byteLength, need - this.prefixLength);
        this.prefix.set(rest.subarray(0, take), this.prefixLength);
        this.prefixLength += take;
        rest = rest.subarray(take);
        at += take;
      }
      while (rest.byteLength > 0 && this.current < this.checkers.length) {
        const c = this.checkers[this.current]!;
        if (at >= c.end) {
          this.current++;
          continue;
        }
        if (at < c.start) {
          const skip = Math.min(rest.byteLength, c.start - at);
          rest = rest.subarray(skip);
          at += skip;
          continue;
        }
        const n = Math.min(rest.byteLength, c.end - at);
        if (!c.checker.feed(rest.subarray(0, n)))
          throw new FedlineError(ErrorCodes.UPDATE_NONFINITE, `tensor "${c.checker.spec.name}" contains NaN or Infinity`);
        rest = rest.subarray(n);
        at += n;
      }
    } catch (err) {
      this.failed = err instanceof FedlineError ? err : new FedlineError(ErrorCodes.BUNDLE_FORMAT, (err as Error).message);
    }
  }

  private parseHeader(): void {
    const decoded = decodeBundleHeader(this.prefix.subarray(0, this.prefixLength), this.bundleBytes, updateMetaSchema);
    verifyUpdateHeader(decoded.header, this.expect);
    this.parsed = decoded;
    this.prefix = new Uint8Array(0);
    this.checkers = [...decoded.header.tensors]
      .sort((a, b) => a.offset - b.offset)
      .map((spec) => ({ start: decoded.payloadStart + spec.offset, end: decoded.payloadStart + spec.offset + spec.bytes, checker: new FiniteChecker(spec) }));
  }

  /** The verified header, once every byte went through push(). Throws the failure if there was one. */
  finish(): { header: BundleHeader<DecodedUpdateMeta>; payloadStart: number } {
    if (this.failed) throw this.failed;
    if (!this.parsed) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, 'not a fedline tensor bundle (its header is incomplete)');
    if (this.seen !== this.bundleBytes) throw new FedlineError(ErrorCodes.BUNDLE_FORMAT, `update verification saw ${this.seen} of ${this.bundleBytes} bytes`);
    return this.parsed;
  }
}

/**
 * Check a whole reassembled (SHA-verified) update bundle in memory: header checks as above, then
 * every value finite. Throws a FedlineError whose code names the failed check.
 */
export function verifyUpdate(bundle: Uint8Array, expect: UpdateExpectation): DecodedBundle<UpdateMeta> {
  const v = new UpdateStreamVerifier(bundle.byteLength, expect);
  v.push(bundle, 0);
  const { header, payloadStart } = v.finish();
  return { header, payloadStart, bytes: bundle };
}
