import { chunkCount } from '../shared/bundle/chunking.js';
import { describeError } from '../shared/protocol/errors.js';
import { roundAnnouncementSchema, SUPPORTED_VERSIONS } from '../shared/protocol/messages.js';
import { decodeMsgpack } from '../shared/protocol/wire-codec.js';
import type { InboundMessage } from '../shared/transport/transport.js';
import type { AggregatorContext } from './aggregator-context.js';
import type { StoredModel } from './model-store.js';

/** Retained messages arrive right after the subscription is granted: the scan ends after this much quiet... */
const SCAN_QUIET_MS = 400;
/** ...or after this long in all (a broker holding thousands of old chunks is still read in bounded time). */
const SCAN_MAX_MS = 10_000;

export interface RetainedScan {
  /** Retained topics seen and cleared, by kind. */
  cleared: { round: number; chunks: number };
  scanMs: number;
}

/**
 * At start, before anything of this run is published: clear the retained messages under the
 * topic root that the aggregator itself publishes and that are not its current state, so that
 * agents never act on an earlier run (docs/topics.md, Retained state):
 *   `<root>/round`            an announcement of another run (or one that cannot be read)
 *   `<root>/model/<v>/<seq>`  every chunk but those the current model's publication overwrites
 *                             (version `global.version`, seq below its chunk count): earlier
 *                             runs' versions, and chunks beyond `total` after a chunk-size change
 *   `<root>/model/<v>/control/<seq>`  every chunk of SCAFFOLD's variate (published again with the next round)
 * The manifest on `model/latest` is overwritten right after. Agents' retained statuses are theirs
 * (their last will) and are left alone. Retained messages are found by subscribing for a short,
 * bounded time; an empty retained payload deletes one (MQTT 3.1.1 §3.3.1.3).
 */
export async function clearStaleRetained(ctx: AggregatorContext, runId: string, global: StoredModel): Promise<RetainedScan> {
  const { transport, topics, config, clock, log } = ctx;
  const keepChunks = chunkCount(global.bytes, config.chunkBytes);
  const stale = new Set<string>();
  let last = clock.now();
  const started = last;
  const onRetained = (m: InboundMessage): void => {
    if (!m.retain || m.payload.byteLength === 0) return;
    last = clock.now();
    if (m.topic === topics.round()) {
      if (!isAnnouncementOf(runId, m)) stale.add(m.topic);
      return;
    }
    const chunk = topics.parseModelChunk(m.topic);
    if (chunk && (chunk.version !== global.version || chunk.seq >= keepChunks)) stale.add(m.topic);
    // SCAFFOLD's variate is published again with the next round's announcement.
    if (topics.parseControlChunk(m.topic)) stale.add(m.topic);
  };
  const filters: string[] = [];
  for (const f of [topics.round(), `${topics.root}/model/#`]) {
    try {
      await transport.subscribe(f, onRetained);
      filters.push(f);
    } catch (err) {
      // An ACL made before the aggregator read its own retained topics: go on without the cleanup.
      log.warn(
        { filter: f, err: describeError(err).message },
        "cannot read retained messages to clear an earlier run's; regenerate the broker ACL (`fedline acl`)",
      );
    }
  }
  last = clock.now();
  try {
    while (clock.now() - last < SCAN_QUIET_MS && clock.now() - started < SCAN_MAX_MS) {
      await new Promise<void>((resolve) => clock.setTimeout(resolve, 50));
    }
  } finally {
    for (const f of filters) await transport.unsubscribe(f, onRetained).catch(() => undefined);
  }
  const cleared = { round: 0, chunks: 0 };
  for (const topic of stale) {
    await transport.publish(topic, Buffer.alloc(0), { qos: 1, retain: true });
    if (topic === topics.round()) cleared.round++;
    else cleared.chunks++;
  }
  const scanMs = clock.now() - started;
  if (stale.size > 0) log.info({ runId, ...cleared, scanMs }, 'cleared retained messages of an earlier run');
  return { cleared, scanMs };
}

function isAnnouncementOf(runId: string, m: InboundMessage): boolean {
  try {
    return decodeMsgpack(m.payload, roundAnnouncementSchema, SUPPORTED_VERSIONS, { topic: m.topic, what: 'retained round announcement' }).runId === runId;
  } catch {
    // Unreadable (an older protocol's, a stranger's): not this run's state.
    return false;
  }
}
