/**
 * Closes connections whose reader has stopped: bytes wait in the socket's write buffer and none of
 * them has reached the kernel for `stallTimeoutMs`.
 *
 * Why not Aedes' own `drainTimeout`: it starts a timer when a write finds the buffer full and
 * closes the client unless the buffer empties completely ('drain') before it ends. A subscriber
 * that reads steadily but is fed faster than it reads (the aggregator while a hundred sites
 * upload at once) never sees an empty buffer, so Aedes closed it after 60 s while it was taking
 * tens of MB a second, and the chunks in flight were lost (issue 14, docs/scaling.md). This guard
 * measures progress instead: a reader that takes any bytes stays; one that takes none for the
 * whole timeout (frozen, or a hostile client holding the broker's memory) goes.
 */
/** What the guard needs of a connection. */
export interface WatchedSocket {
  /** Bytes handed to the socket so far, those still in its buffer included (net.Socket). */
  readonly bytesWritten: number;
  /** Bytes waiting in the socket's buffer (net.Socket, Writable). */
  readonly writableLength: number;
  destroy(error?: Error): unknown;
}

/** A net.Socket's internals that say how many bytes libuv has passed to the kernel (kernelBytes). */
interface SocketInternals {
  _bytesDispatched?: unknown;
  _handle?: { writeQueueSize?: unknown } | null;
}

/**
 * Bytes of `socket` that reached the kernel. Node counts a write as done only when libuv has
 * written all of it, and it hands everything buffered to libuv as one write (writev) when the
 * previous one ends: behind a slow reader that write is megabytes long, and the public counters
 * (bytesWritten - writableLength) stand still for as long as it takes although bytes move. So,
 * where the TCP handle has them (net.Socket since Node 0.x), bytes dispatched to libuv less
 * libuv's own queue; otherwise (a TLS socket, a stream) the completed writes.
 */
export function kernelBytes(socket: WatchedSocket): number {
  const s = socket as unknown as SocketInternals;
  const queue = s._handle?.writeQueueSize;
  if (typeof s._bytesDispatched === 'number' && typeof queue === 'number') return s._bytesDispatched - queue;
  return socket.bytesWritten - socket.writableLength;
}

export interface StalledConnection {
  /** Bytes waiting in its buffer when it was closed. */
  queuedBytes: number;
  /** How long nothing reached the kernel, ms. */
  stalledMs: number;
}

interface Watch {
  /** Bytes that had left the buffer at the last progress. */
  flushed: number;
  /** When bytes last left the buffer (or the buffer was last empty), ms. */
  sinceMs: number;
}

export class StallGuard<S extends WatchedSocket = WatchedSocket> {
  private readonly watched = new Map<S, Watch>();
  private timer: NodeJS.Timeout | null = null;
  /** Connections closed for a stall since the start. */
  closed = 0;

  /**
   * @param stallTimeoutMs close a connection after this long without progress while bytes wait
   * @param onStall told before the connection is destroyed (log, count)
   * @param now clock, ms (tests step it)
   */
  constructor(
    readonly stallTimeoutMs: number,
    private readonly onStall: (socket: S, info: StalledConnection) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Checks every quarter of the timeout (at most every 5 s): a stall is found within 1.25 timeouts. */
  start(): void {
    this.timer ??= setInterval(() => this.check(), Math.min(5000, Math.max(10, this.stallTimeoutMs / 4)));
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.watched.clear();
  }

  watch(socket: S): void {
    this.watched.set(socket, { flushed: kernelBytes(socket), sinceMs: this.now() });
  }

  forget(socket: S): void {
    this.watched.delete(socket);
  }

  /** One pass over the connections; returns those closed. */
  check(): S[] {
    const now = this.now();
    const stalled: S[] = [];
    for (const [socket, w] of this.watched) {
      const queued = socket.writableLength;
      const flushed = kernelBytes(socket);
      if (queued === 0 || flushed > w.flushed) {
        w.flushed = flushed;
        w.sinceMs = now;
      } else if (now - w.sinceMs >= this.stallTimeoutMs) {
        stalled.push(socket);
      }
    }
    for (const socket of stalled) {
      const w = this.watched.get(socket)!;
      this.watched.delete(socket);
      this.closed++;
      this.onStall(socket, { queuedBytes: socket.writableLength, stalledMs: Math.round(now - w.sinceMs) });
      socket.destroy(new Error(`write stall: nothing read for ${Math.round(now - w.sinceMs)} ms`));
    }
    return stalled;
  }
}
