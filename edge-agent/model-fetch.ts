import { readFile } from 'node:fs/promises';
import type { Logger } from '../shared/util/logger.js';
import type { ModelRef } from '../shared/protocol/messages.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { Transport } from '../shared/transport/transport.js';
import type { ModelCache } from './model-cache.js';
import { downloadModel, downloadModelToFile, type DownloadOptions } from './model-downlink.js';

/**
 * The round's base model, from the agent's cache or downloaded straight into it (a file, checked
 * while it arrives), then read into memory once for training. Downloading a 557 MB model thus
 * never holds a second in-memory copy next to the one the trainer uses.
 */
export async function fetchModelBundle(
  transport: Transport,
  topics: Topics,
  cache: ModelCache,
  ref: ModelRef,
  log: Logger,
  options: DownloadOptions & { onStorageProblem?: (message: string) => void },
): Promise<{ bundle: Buffer; downloadedBytes: number }> {
  const cached = await cache.get(ref.version, ref.sha256);
  if (cached) return { bundle: cached, downloadedBytes: 0 };
  let path: string;
  try {
    path = await cache.receive(ref.version, ref.sha256, (partPath) => downloadModelToFile(transport, topics, ref, partPath, log, options));
  } catch (err) {
    // A disk that refuses the file (full, read-only, failing) must not stop the agent: download
    // into memory instead, as before the cache existed. Protocol errors (SHA-256, abort) propagate.
    if (!(err as NodeJS.ErrnoException).syscall) throw err;
    options.onStorageProblem?.(`could not keep model version ${ref.version} on disk (${(err as Error).message}); downloading it into memory`);
    return { bundle: await downloadModel(transport, topics, ref, log, options), downloadedBytes: ref.bytes };
  }
  // Verified (SHA-256) while it was written: no second hashing pass here.
  return { bundle: await readFile(path), downloadedBytes: ref.bytes };
}
