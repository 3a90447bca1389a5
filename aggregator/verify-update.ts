import { ErrorCodes, FedlineError } from '../shared/errors.js';
import { allFinite } from '../shared/fedavg.js';
import { updateMetaSchema, type UpdateMeta } from '../shared/messages.js';
import { decodeBundle, tensorData, type DecodedBundle, type TensorSpec } from '../shared/tensor-bundle.js';

export interface UpdateExpectation {
  round: number;
  agent: string;
  baseVersion: number;
  /** The tensors the round federates, as the global model has them (name, shape, dtype). */
  tensors: readonly Pick<TensorSpec, 'name' | 'shape' | 'dtype'>[];
  /** Most samples this agent may claim (its registered count or the federation's cap); null: no limit. */
  maxSamples?: number | null;
}

/**
 * Check a reassembled (SHA-verified) update bundle before it may enter the average: its meta is
 * for this round, agent and base version; it carries exactly the federated tensors with the
 * global model's shapes; every value is finite; the sample count is a positive integer.
 * Throws a FedlineError whose code names the failed check.
 */
export function verifyUpdate(bundle: Uint8Array, expect: UpdateExpectation): DecodedBundle<UpdateMeta> {
  const decoded = decodeBundle<UpdateMeta>(bundle, updateMetaSchema);
  const meta = decoded.header.meta;
  if (meta.round !== expect.round || meta.agent !== expect.agent) {
    throw new FedlineError(ErrorCodes.UPDATE_MANIFEST, `update meta says round ${meta.round} from "${meta.agent}" but arrived as round ${expect.round} from "${expect.agent}"`);
  }
  if (meta.baseVersion !== expect.baseVersion) {
    throw new FedlineError(ErrorCodes.WRONG_BASE, `update was trained from model version ${meta.baseVersion}; round ${expect.round} is based on version ${expect.baseVersion}`);
  }
  const got = new Map(decoded.header.tensors.map((t) => [t.name, t]));
  const missing = expect.tensors.filter((t) => !got.has(t.name)).map((t) => t.name);
  const extra = decoded.header.tensors.filter((t) => !expect.tensors.some((e) => e.name === t.name)).map((t) => t.name);
  if (missing.length || extra.length) {
    throw new FedlineError(
      ErrorCodes.UPDATE_MANIFEST,
      `update tensors do not match the round's federated set${missing.length ? `; missing: ${missing.slice(0, 5).join(', ')}` : ''}${extra.length ? `; unexpected: ${extra.slice(0, 5).join(', ')}` : ''}`,
    );
  }
  for (const e of expect.tensors) {
    const t = got.get(e.name)!;
    if (t.dtype !== e.dtype || t.shape.length !== e.shape.length || t.shape.some((d, i) => d !== e.shape[i])) {
      throw new FedlineError(ErrorCodes.UPDATE_MANIFEST, `tensor "${e.name}" is ${t.dtype}[${t.shape.join(', ')}], the global model has ${e.dtype}[${e.shape.join(', ')}]`);
    }
    if (!allFinite(tensorData(decoded, t))) {
      throw new FedlineError(ErrorCodes.UPDATE_NONFINITE, `tensor "${e.name}" contains NaN or Infinity`);
    }
  }
  if (!Number.isSafeInteger(meta.sampleCount) || meta.sampleCount <= 0) {
    throw new FedlineError(ErrorCodes.UPDATE_SAMPLES, `sample count ${meta.sampleCount} is not a positive integer`);
  }
  if (expect.maxSamples != null && meta.sampleCount > expect.maxSamples) {
    // FedAvg weights by sample count: an inflated count would let one site outweigh the others.
    throw new FedlineError(ErrorCodes.UPDATE_SAMPLES, `update claims ${meta.sampleCount} training samples; at most ${expect.maxSamples} are allowed for ${expect.agent}`);
  }
  return decoded;
}
