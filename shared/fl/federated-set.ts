import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import type { FederatedSet } from '../protocol/messages.js';

/**
 * Which tensors train and travel in a round. `all`: the paper's Process1 (full fine-tuning);
 * `head`: Process2 (feature extractor frozen, only the classifier head is federated); or an
 * explicit list of tensor names. Returns names in the model's own order.
 */
export function resolveFederated(set: FederatedSet, allNames: readonly string[], headNames: readonly string[]): string[] {
  if (set === 'all') return [...allNames];
  const wanted = new Set(set === 'head' ? headNames : set);
  const unknown = [...wanted].filter((n) => !allNames.includes(n));
  if (unknown.length) throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, `federated tensors not in the model: ${unknown.join(', ')}`, { unknown });
  if (wanted.size === 0) throw new FedlineError(ErrorCodes.MODEL_INCOMPATIBLE, 'the federated tensor set is empty (a model without head tensors?)');
  return allNames.filter((n) => wanted.has(n));
}
