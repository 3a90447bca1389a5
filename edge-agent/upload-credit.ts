import type { Logger } from '../shared/util/logger.js';

/**
 * End-to-end flow-control credit of one upload (the round's `windowChunks`): the sender may
 * publish at most `credit` chunks beyond those the aggregator reported stored in its progress
 * acks. The aggregator shares its credit among the agents sending at the moment, so a progress
 * ack may change it. MQTT's PUBACK only says the broker has a message (Mosquitto acknowledges
 * before the subscriber has read it), so without this a slow aggregator would let the senders
 * fill the broker.
 */
export class UploadCredit {
  /** Chunks the sender may run ahead of `stored`; 0: no flow control (only the broker's PUBACK window). */
  private credit: number;
  private stored = 0;
  /** A credit wait timed out: send on without flow control until the next progress ack (no crawl of one chunk per timeout). */
  private lost = false;
  private wake: (() => void) | null = null;
  /** Times the credit was used up and the sender waited for the aggregator. */
  waits = 0;
  /** Of those waits, how many ended without credit (no progress ack within the timeout). */
  timeouts = 0;
  /** A progress ack came during this upload: the aggregator does flow control. */
  heardProgress = false;

  /**
   * @param onTimeout called when a wait has had no progress ack for `timeoutMs` (it may ask the
   * aggregator where the upload stands and call `learned`); true: send on without credit until the
   * next progress ack, false: wait on. Without it the sender sends on.
   */
  constructor(
    creditChunks: number,
    private readonly timeoutMs: number,
    private readonly log: Logger,
    private readonly round: number,
    private readonly onTimeout?: (index: number) => Promise<boolean>,
  ) {
    this.credit = creditChunks;
  }

  /** A progress ack: the aggregator has stored `stored` chunks and grants `credit` (0: unchanged). */
  progress(stored: number, credit: number): void {
    this.heardProgress = true;
    if (this.credit > 0 && credit > 0) this.credit = credit;
    this.learned(stored);
  }

  /** The aggregator holds `stored` chunks of the upload (a progress ack, or the answer to a query). */
  learned(stored: number): void {
    this.stored = Math.max(this.stored, stored);
    this.lost = false;
    this.wake?.();
  }

  /** Resolves when chunk `index` may be published, when `stop` aborts, or when `onTimeout` says to send on. */
  async waitFor(index: number, stop: AbortSignal, signal?: AbortSignal): Promise<void> {
    if (this.credit <= 0 || this.lost || index - this.stored < this.credit) return;
    this.waits++;
    let started = Date.now();
    while (index - this.stored >= this.credit && !stop.aborted && !signal?.aborted) {
      const left = this.timeoutMs - (Date.now() - started);
      if (left <= 0) {
        this.timeouts++;
        if (this.onTimeout && !(await this.onTimeout(index))) {
          started = Date.now();
          continue;
        }
        // An aggregator without progress acks: go on; resends repair any loss.
        this.log.warn(
          { round: this.round, index, stored: this.stored, credit: this.credit },
          'no progress from the aggregator; sending on without flow-control credit until it reports again',
        );
        this.lost = true;
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
