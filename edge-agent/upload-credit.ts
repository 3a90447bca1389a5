import type { Logger } from '../shared/util/logger.js';

/**
 * End-to-end flow-control credit of one upload (the round's `windowChunks`): the sender may
 * publish at most `credit` chunks beyond those the aggregator reported stored in its progress
 * acks. The aggregator shares its credit among the agents sending at the moment, so a progress
 * ack may change it. MQTT's PUBACK only says the broker has a message (Mosquitto acknowledges
 * before the subscriber has read it), so without this a slow aggregator would let the senders
 * fill the broker.
 *
 * When no progress ack comes within the timeout (the aggregator or the broker is overloaded, or
 * acks were lost), the sender may run twice as far ahead, and twice again after each further
 * timeout, until a progress ack sets the granted credit again. Before, one timeout lifted the
 * bound altogether: measured with bench:scale at 100 sites x 50 MB on two broker nodes, every
 * agent whose first chunks sat behind the base model's fan-out for a minute then pushed its whole
 * update into the broker (a node peaked at 2.4 GiB, Redis at 0.97 GiB, 740 chunks were resent;
 * docs/scaling.md). Doubling keeps an upload from crawling at one credit per timeout (a VGG-19
 * update with credit 8 is through after 9 timeouts, not 266) while an overloaded path gets
 * a bounded amount more at a time.
 */
export class UploadCredit {
  /** Chunks the sender may run ahead of `stored`, as granted; 0: no flow control (only the broker's PUBACK window). */
  private credit: number;
  private stored = 0;
  /** How far ahead the sender may run now: the credit, doubled at each timeout since the last progress ack. */
  private allowance: number;
  private wake: (() => void) | null = null;
  /** Times the credit was used up and the sender waited for the aggregator. */
  waits = 0;
  /** Of those waits, how many ended without credit (no progress ack within the timeout). */
  timeouts = 0;

  constructor(
    creditChunks: number,
    private readonly timeoutMs: number,
    private readonly log: Logger,
    private readonly round: number,
  ) {
    this.credit = creditChunks;
    this.allowance = creditChunks;
  }

  /** A progress ack: the aggregator has stored `stored` chunks and grants `credit` (0: unchanged). */
  progress(stored: number, credit: number): void {
    this.stored = Math.max(this.stored, stored);
    if (this.credit > 0 && credit > 0) this.credit = credit;
    this.allowance = this.credit;
    this.wake?.();
  }

  /** Resolves when chunk `index` may be published, when `stop` aborts, or after the timeout (then the allowance doubles). */
  async waitFor(index: number, stop: AbortSignal, signal?: AbortSignal): Promise<void> {
    if (this.credit <= 0 || index - this.stored < this.allowance) return;
    this.waits++;
    const started = Date.now();
    while (index - this.stored >= this.allowance && !stop.aborted && !signal?.aborted) {
      const left = this.timeoutMs - (Date.now() - started);
      if (left <= 0) {
        // Progress acks late or lost: run further ahead, but not without bound; resends repair any loss.
        this.allowance *= 2;
        this.timeouts++;
        this.log.warn(
          { round: this.round, index, stored: this.stored, credit: this.credit, allowance: this.allowance },
          'no progress from the aggregator within the timeout; sending up to twice as far ahead until it reports again',
        );
        return;
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.wake = null;
          resolve();
        };
        const timer = setTimeout(done, left);
        this.wake = done;
      });
    }
  }

  /** Ends a wait in progress (the upload is over). */
  release(): void {
    this.wake?.();
  }
}
