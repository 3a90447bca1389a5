import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import { writeJsonAtomic } from '../shared/util/fs-atomic.js';
import { emptyRegistry, type RegistryData } from './release-policy.js';

/**
 * The model registry on disk, `<stateDir>/registry.json`: each stored version's stage
 * (candidate, validated, rejected, released, superseded, rolled-back), the gates' report, the
 * released version with its release sequence number, and the history of decisions. Written
 * atomically (temporary file, fsync, rename) after every change, so a crash keeps either the old
 * or the new registry. The transitions themselves are in release-policy.ts; `fedline models`
 * reads the same file.
 */
export const REGISTRY_FILE = 'registry.json';

export function registryPath(stateDir: string): string {
  return join(stateDir, REGISTRY_FILE);
}

/** The registry a previous run left; null when there is none yet. Throws FL_MODEL_STORE when it is unreadable. */
export async function readRegistry(stateDir: string): Promise<RegistryData | null> {
  const path = registryPath(stateDir);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new FedlineError(ErrorCodes.MODEL_STORE, `cannot read the model registry ${path}: ${(err as Error).message}`);
  }
  try {
    const data = JSON.parse(text) as Partial<RegistryData>;
    if (typeof data !== 'object' || data === null || typeof data.versions !== 'object' || !Array.isArray(data.history)) throw new Error('not a registry');
    return { ...emptyRegistry(), ...data } as RegistryData;
  } catch (err) {
    throw new FedlineError(ErrorCodes.MODEL_STORE, `the model registry ${path} is unreadable: ${(err as Error).message}`);
  }
}

export class ModelRegistry {
  data: RegistryData = emptyRegistry();
  private readonly stateDir: string;
  private chain: Promise<void> = Promise.resolve();

  constructor(stateDir: string) {
    this.stateDir = stateDir;
  }

  get path(): string {
    return registryPath(this.stateDir);
  }

  /** Load the registry; false when there was none (a new federation, or a state folder from before the registry). */
  async load(): Promise<boolean> {
    const data = await readRegistry(this.stateDir);
    if (data) this.data = data;
    return data !== null;
  }

  /** Save the current data (saves are serialised; each writes the whole file atomically). */
  save(): Promise<void> {
    const snapshot = JSON.parse(JSON.stringify(this.data)) as RegistryData;
    const next = this.chain.then(() => writeJsonAtomic(this.path, snapshot));
    this.chain = next.catch(() => undefined);
    return next;
  }
}
