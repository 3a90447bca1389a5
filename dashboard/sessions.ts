import { randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * Operator logins of the dashboard: a random session id in an HttpOnly, SameSite=Strict cookie,
 * and a per-session CSRF token the page sends back in a header with every action (a form on
 * another site can neither read the token nor set the header). Sessions live in memory: a
 * restarted dashboard asks operators to log in again.
 */

export const SESSION_COOKIE = 'fedline_dashboard';

export interface Session {
  id: string;
  user: string;
  csrf: string;
  lastUsed: number;
}

export class SessionStore {
  private readonly sessions = new Map<string, Session>();
  /** Failed logins per client address, for the back-off. */
  private readonly failures = new Map<string, { count: number; until: number }>();

  constructor(private readonly idleMs: number) {}

  create(user: string, now = Date.now()): Session {
    const s: Session = { id: randomBytes(24).toString('base64url'), user, csrf: randomBytes(24).toString('base64url'), lastUsed: now };
    this.sessions.set(s.id, s);
    return s;
  }

  /** The session of a request's cookie header, if valid and not idle too long. */
  fromCookie(cookieHeader: string | undefined, now = Date.now()): Session | null {
    const id = parseCookies(cookieHeader)[SESSION_COOKIE];
    if (!id) return null;
    const s = this.sessions.get(id);
    if (!s) return null;
    if (now - s.lastUsed > this.idleMs) {
      this.sessions.delete(id);
      return null;
    }
    s.lastUsed = now;
    return s;
  }

  end(id: string): void {
    this.sessions.delete(id);
  }

  /** ms a client must still wait before its next login attempt (doubling after each failure, at most 30 s). */
  loginDelayMs(address: string, now = Date.now()): number {
    const f = this.failures.get(address);
    return f ? Math.max(0, f.until - now) : 0;
  }

  loginFailed(address: string, now = Date.now()): void {
    const f = this.failures.get(address) ?? { count: 0, until: 0 };
    f.count++;
    f.until = now + Math.min(30_000, 250 * 2 ** (f.count - 1));
    this.failures.set(address, f);
    if (this.failures.size > 10_000) this.failures.delete(this.failures.keys().next().value!);
  }

  loginSucceeded(address: string): void {
    this.failures.delete(address);
  }
}

export function csrfMatches(session: Session, token: string | undefined): boolean {
  if (!token) return false;
  const a = Buffer.from(session.csrf);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function sessionCookie(s: Session, idleMs: number): string {
  return `${SESSION_COOKIE}=${s.id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${Math.floor(idleMs / 1000)}`;
}

export function clearedCookie(): string {
  return `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`;
}

function parseCookies(header: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (header ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}
