import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ErrorCodes } from '../shared/protocol/errors.js';
import type { Counters } from '../shared/util/counters.js';
import type { Logger } from '../shared/util/logger.js';
import type { OperatorPasswords } from './operator-passwords.js';
import { clearedCookie, csrfMatches, sessionCookie, SessionStore, type Session } from './sessions.js';

/** What the page may ask for: the MES commands of docs/topics.md, and the release manager's release / rollback. */
export const operatorVerbs = ['start', 'stop', 'pause', 'resume', 'release', 'rollback'] as const;
export type OperatorVerb = (typeof operatorVerbs)[number];

export interface DashboardHttpOptions {
  host: string;
  port: number;
  snapshot(): unknown;
  operators: OperatorPasswords | null;
  sessionIdleMs: number;
  /** Publish the command; resolves with its requestId once the broker took it. */
  sendCommand(verb: OperatorVerb, body: Record<string, unknown>, user: string): Promise<string>;
  log: Logger;
  counters: Counters;
}

export interface DashboardHttp {
  url: string;
  port: number;
  /** The view changed: push it to the pages (debounced). */
  changed(): void;
  close(): Promise<void>;
}

const STATIC_DIR = new URL('../../dashboard/static/', import.meta.url);
const ASSETS: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/charts.js': { file: 'charts.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};
const MAX_BODY_BYTES = 16 * 1024;
const MAX_STREAMS = 64;
const PUSH_DEBOUNCE_MS = 150;
const HEARTBEAT_MS = 15_000;

/** The dashboard's web server (node:http): the page and its assets from dashboard/static, the view as JSON and as Server-Sent Events, login and actions. */
export async function startDashboardHttp(o: DashboardHttpOptions): Promise<DashboardHttp> {
  const assets = new Map(Object.entries(ASSETS).map(([path, a]) => [path, { type: a.type, body: readFileSync(new URL(a.file, STATIC_DIR)) }]));
  const sessions = new SessionStore(o.sessionIdleMs);
  const streams = new Set<ServerResponse>();
  const push = () => {
    const data = `event: state\ndata: ${JSON.stringify(o.snapshot())}\n\n`;
    for (const s of streams) s.write(data);
  };
  let pending: NodeJS.Timeout | null = null;
  const heartbeat = setInterval(() => {
    for (const s of streams) s.write(': keep-alive\n\n');
  }, HEARTBEAT_MS);

  const api = new ApiHandlers(o, sessions, streams, push);
  const server = createServer((req, res) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
    const path = (req.url ?? '/').split('?')[0]!;
    const asset = req.method === 'GET' ? assets.get(path) : undefined;
    if (asset) {
      res.writeHead(200, { 'content-type': asset.type, 'cache-control': 'no-cache' }).end(asset.body);
      return;
    }
    api.handle(req, res, path).catch((err: Error) => {
      o.log.error({ err: err.message, path }, 'dashboard request failed');
      if (!res.headersSent) json(res, 500, { error: 'internal error' });
      else res.end();
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await listen(server, o.port, o.host);
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${o.host.includes(':') ? `[${o.host}]` : o.host}:${port}/`,
    port,
    changed() {
      pending ??= setTimeout(() => {
        pending = null;
        push();
      }, PUSH_DEBOUNCE_MS);
    },
    async close() {
      clearInterval(heartbeat);
      if (pending) clearTimeout(pending);
      for (const s of streams) s.end();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

class ApiHandlers {
  constructor(
    private readonly o: DashboardHttpOptions,
    private readonly sessions: SessionStore,
    private readonly streams: Set<ServerResponse>,
    private readonly push: () => void,
  ) {}

  async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const route = `${req.method} ${path}`;
    if (route === 'GET /api/state') return json(res, 200, this.o.snapshot());
    if (route === 'GET /api/events') return this.stream(req, res);
    if (route === 'GET /api/session') {
      const s = this.sessions.fromCookie(req.headers.cookie);
      return json(res, 200, { operatorsEnabled: this.o.operators !== null, user: s?.user ?? null, csrf: s?.csrf ?? null, verbs: operatorVerbs });
    }
    if (req.method === 'POST' && !this.sameOrigin(req)) return this.refuse(res, 403, 'cross-origin request refused');
    if (route === 'POST /api/login') return this.login(req, res);
    if (route === 'POST /api/logout') {
      const s = this.sessions.fromCookie(req.headers.cookie);
      if (s && csrfMatches(s, header(req, 'x-csrf-token'))) this.sessions.end(s.id);
      res.setHeader('set-cookie', clearedCookie());
      return json(res, 200, { user: null });
    }
    const verb = /^POST \/api\/command\/([a-z-]+)$/.exec(route)?.[1];
    if (verb !== undefined) return this.command(req, res, verb);
    json(res, 404, { error: 'not found' });
  }

  private stream(req: IncomingMessage, res: ServerResponse): void {
    if (this.streams.size >= MAX_STREAMS) return json(res, 503, { error: 'too many open pages' });
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.write(`retry: 2000\nevent: state\ndata: ${JSON.stringify(this.o.snapshot())}\n\n`);
    this.streams.add(res);
    req.on('close', () => this.streams.delete(res));
  }

  private async login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.o.operators) return this.refuse(res, 403, 'no operators are configured: this dashboard is read-only');
    const address = req.socket.remoteAddress ?? '?';
    const waitMs = this.sessions.loginDelayMs(address);
    if (waitMs > 0) return this.refuse(res, 429, `too many failed logins: try again in ${Math.ceil(waitMs / 1000)} s`);
    const body = await readJson(req);
    const user = typeof body?.username === 'string' ? body.username : '';
    const password = typeof body?.password === 'string' ? body.password : '';
    if (!user || !(await this.o.operators.verify(user, password))) {
      this.sessions.loginFailed(address);
      this.o.log.warn({ user, address }, 'dashboard login refused');
      return this.refuse(res, 401, 'wrong user name or password');
    }
    this.sessions.loginSucceeded(address);
    const s = this.sessions.create(user);
    this.o.log.info({ user, address }, 'operator logged in');
    res.setHeader('set-cookie', sessionCookie(s, this.o.sessionIdleMs));
    json(res, 200, { user: s.user, csrf: s.csrf });
  }

  private async command(req: IncomingMessage, res: ServerResponse, verb: string): Promise<void> {
    const s: Session | null = this.sessions.fromCookie(req.headers.cookie);
    if (!s) return this.refuse(res, 401, 'log in first');
    if (!csrfMatches(s, header(req, 'x-csrf-token'))) return this.refuse(res, 403, 'missing or wrong CSRF token: reload the page');
    if (!(operatorVerbs as readonly string[]).includes(verb)) return this.refuse(res, 400, `unknown action "${verb}": one of ${operatorVerbs.join(', ')}`);
    const body = (await readJson(req)) ?? {};
    const command: Record<string, unknown> = {};
    if (typeof body.reason === 'string' && body.reason.length <= 1000) command.reason = body.reason;
    if (verb === 'release' || verb === 'rollback') {
      const version = Number(body.version);
      if (body.version !== undefined && body.version !== '' && !(Number.isInteger(version) && version >= 0))
        return this.refuse(res, 400, 'version must be a model version number');
      if (body.version !== undefined && body.version !== '') command.version = version;
      if (verb === 'release' && command.version === undefined) return this.refuse(res, 400, 'release needs the version to release');
    }
    let requestId: string;
    try {
      requestId = await this.o.sendCommand(verb as OperatorVerb, command, s.user);
    } catch (err) {
      this.o.log.warn({ user: s.user, verb, err: (err as Error).message }, 'operator command not sent');
      return json(res, 504, { error: (err as Error).message });
    }
    this.o.log.info({ user: s.user, verb, requestId, ...command }, 'operator command sent');
    this.push();
    json(res, 202, { requestId });
  }

  /** A POST must come from the page itself: an Origin header, when the browser sends one, names this server. */
  private sameOrigin(req: IncomingMessage): boolean {
    const origin = header(req, 'origin');
    return origin === undefined || origin === `http://${req.headers.host}`;
  }

  private refuse(res: ServerResponse, status: number, error: string): void {
    this.o.counters.inc(ErrorCodes.AUTH);
    json(res, status, { error });
  }
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }).end(JSON.stringify(body));
}

/** A small JSON body (login form, command), or null when it is missing, too big or not a JSON object. */
async function readJson(req: IncomingMessage): Promise<Record<string, unknown> | null> {
  if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) return null;
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    if (bytes > MAX_BODY_BYTES) return null;
    chunks.push(chunk);
  }
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
