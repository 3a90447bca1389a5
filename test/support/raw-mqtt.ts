import { connect as netConnect, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';

/**
 * Hand-made MQTT 3.1.1 bytes for attack tests: clients that break the rules a library would
 * keep (an announced 200 MB CONNECT streamed slowly, logins from many source addresses).
 */

/** The MQTT remaining-length varint (§2.2.3). */
export function remainingLength(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

const str = (s: string) => {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
};

/** A CONNECT packet (clean session, keep-alive 60 s) with a user name and password. */
export function connectPacket(clientId: string, username: string, password: string): Buffer {
  const variable = Buffer.concat([str('MQTT'), Buffer.from([4, 0xc2, 0, 60])]);
  const payload = Buffer.concat([str(clientId), str(username), str(password)]);
  return Buffer.concat([Buffer.from([0x10]), remainingLength(variable.length + payload.length), variable, payload]);
}

/** A SUBSCRIBE packet (packet id 1) for one topic filter at `qos`. */
export function subscribePacket(topic: string, qos: 0 | 1 = 0): Buffer {
  const body = Buffer.concat([Buffer.from([0, 1]), str(topic), Buffer.from([qos])]);
  return Buffer.concat([Buffer.from([0x82]), remainingLength(body.length), body]);
}

/** Bytes of a QoS 0 PUBLISH of `payloadBytes` on `topic`, as a broker sends it on. */
export function publishPacketBytes(topic: string, payloadBytes: number): number {
  const body = 2 + Buffer.byteLength(topic) + payloadBytes;
  return 1 + remainingLength(body).length + body;
}

/**
 * Log in with a raw socket (optionally from `localAddress`, e.g. another 127.x.y.z) and return
 * the CONNACK return code (0 accepted, 4 bad password, 5 not authorized, 3 unavailable), or null
 * when the broker closed the connection without one.
 */
export function rawLogin(port: number, username: string, password: string, localAddress?: string, timeoutMs = 30_000): Promise<number | null> {
  return new Promise((resolve) => {
    const socket = netConnect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
    let got = Buffer.alloc(0);
    const done = (code: number | null) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(code);
    };
    const timer = setTimeout(() => done(null), timeoutMs);
    socket.on('connect', () => socket.write(connectPacket(`raw-${Math.random().toString(36).slice(2)}`, username, password)));
    socket.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 4 && got[0] === 0x20) done(got[3]!);
    });
    socket.on('error', () => done(null));
    socket.on('close', () => done(null));
  });
}

/**
 * Announce a CONNECT of `announcedBytes` and stream it (zeros) as fast as the socket takes it,
 * never finishing; resolves with the bytes sent when the broker closes the connection (or when all
 * were sent, which means the broker took them all in).
 */
export function oversizedConnect(port: number, announcedBytes: number): Promise<{ sent: number; closedByBroker: boolean }> {
  return new Promise((resolve) => {
    const socket: Socket = netConnect({ host: '127.0.0.1', port });
    const block = Buffer.alloc(1024 * 1024);
    let sent = 0;
    let finished = false;
    const done = (closedByBroker: boolean) => {
      if (finished) return;
      finished = true;
      socket.destroy();
      resolve({ sent, closedByBroker });
    };
    const pump = () => {
      while (!finished && sent < announcedBytes) {
        const n = Math.min(block.length, announcedBytes - sent);
        sent += n;
        if (!socket.write(n === block.length ? block : block.subarray(0, n))) return void socket.once('drain', pump);
      }
      // Everything went out; the last bytes of the CONNECT never come (an unfinished packet).
      if (sent >= announcedBytes) setTimeout(() => done(false), 2000);
    };
    socket.on('connect', () => {
      const head = Buffer.concat([Buffer.from([0x10]), remainingLength(announcedBytes + 1000), str('MQTT'), Buffer.from([4, 0x02, 0, 60])]);
      socket.write(head);
      pump();
    });
    socket.on('error', () => done(true));
    socket.on('close', () => done(true));
  });
}

/** A process's resident set size in MB (Linux /proc). */
export function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}
