import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { accessFileSchema, mayPublish, maySubscribe, rightsFor } from '../broker/access.js';
import { hashPassword } from '../broker/passwords.js';
import { FederationView } from '../dashboard/federation-view.js';
import { startDashboardHttp, type OperatorVerb } from '../dashboard/http-server.js';
import { OperatorPasswords } from '../dashboard/operator-passwords.js';
import type { AgentState, AgentStatus } from '../shared/protocol/messages.js';
import { Counters } from '../shared/util/counters.js';
import { silentLogger } from '../shared/util/logger.js';
import { startBroker } from '../broker/main.js';
import { dashboardConfigSchema } from '../dashboard/dashboard-config.js';
import { startDashboard } from '../dashboard/main.js';
import { parseConfig } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { parseDemoArgs } from '../cli/demo-cmd.js';
import { REPO_ROOT, tempDir, testAccess, waitFor, writeAuthFiles } from './helpers.js';
import { mesObserver } from './mes-observer.js';

const metrics = (accuracy: number, defectRecall: number) => ({
  samples: 8,
  loss: 0.5,
  accuracy,
  balancedAccuracy: accuracy - 0.05,
  confusion: [
    [2, 0],
    [0, 2],
  ],
  precision: [1, 1],
  recall: [0.9, defectRecall],
});
const status = (agent: string, state: AgentState, round: number | null, ts: number): AgentStatus => ({
  v: 1,
  agent,
  state,
  round,
  progress: null,
  detail: null,
  backend: 'cpu',
  samples: { train: 16, test: 8 },
  window: { state: state === 'waiting-window' ? 'closed' : 'open', detail: 'opcua Line1' },
  ts,
});

test('the dashboard role: reads the federation, sends commands only as an operator, never verdicts or updates', () => {
  const viewer = rightsFor({ username: 'board', role: 'dashboard', read: [], write: [] }, 'fl/x');
  const operator = rightsFor({ username: 'board', role: 'dashboard', operator: true, read: [], write: [] }, 'fl/x');
  for (const r of [viewer, operator]) {
    assert.ok(maySubscribe(r, 'fl/x/events/#') && maySubscribe(r, 'fl/x/agent/+/status') && maySubscribe(r, 'fl/x/model/latest'));
    assert.ok(!maySubscribe(r, 'fl/x/inspection/+/verdict') && !maySubscribe(r, 'fl/x/round/+/update/+') && !maySubscribe(r, 'fl/x/#'));
    assert.ok(!mayPublish(r, 'fl/x/events/alert') && !mayPublish(r, 'fl/x/agent/site-a/status'));
  }
  assert.ok(!mayPublish(viewer, 'fl/x/cmd/pause'), 'a read-only dashboard sends no command');
  assert.ok(mayPublish(operator, 'fl/x/cmd/pause') && mayPublish(operator, 'fl/x/cmd/release'));
  assert.throws(() => accessFileSchema.parse({ topicRoot: 'fl/x', users: [{ username: 'mes', role: 'mes', operator: true }] }), /only a dashboard user/);
});

test('the federation view: agents with window, backend and open alerts; rounds with who trained and waited; site points per model version; stages', () => {
  const v = new FederationView('x', { index: 1, name: 'NOT_OKAY' });
  const env = (type: string, ts: number) => ({ v: 1, type, federation: 'x', ts });
  v.onStatus(status('site-a', 'idle', null, 1000), 1000);
  v.onStatus(status('site-b', 'idle', null, 1000), 1000);
  v.onEvent({ ...env('round-started', 2000), round: 1, kind: 'train', baseVersion: 0, selected: ['site-a', 'site-b'], deadlineAt: 9e12, resumed: false }, 2000);
  v.onStatus(status('site-a', 'training', 1, 2100), 2100);
  v.onStatus(status('site-b', 'waiting-window', 1, 2100), 2100);
  v.onStatus(status('site-b', 'training', 1, 5100), 5100);
  v.onEvent({ ...env('alert', 5200), severity: 'warning', code: 'FL_OPCUA_UNREACHABLE', message: 'PLC down', agent: 'site-b' }, 5200);
  v.onEvent(
    {
      ...env('round-completed', 6000),
      round: 1,
      kind: 'train',
      baseVersion: 0,
      selected: ['site-a', 'site-b'],
      deadlineAt: 9e12,
      startedAt: 2000,
      closedAt: 5900,
      outcome: 'aggregate',
      reason: 'all',
      newVersion: 1,
      participants: ['site-a'],
      sampleCounts: { 'site-a': 16 },
      baseMetrics: { 'site-a': metrics(0.5, 0.25), 'site-b': metrics(0.4, 0) },
      localMetrics: {},
      failures: [{ agent: 'site-b', code: 'FL_UPDATE_REJECTED', reason: 'norm' }],
      trainMs: { 'site-a': 800 },
      bytesUp: 100,
      bytesDown: 200,
      aggregateMs: 3,
      durationMs: 3900,
    },
    6000,
  );
  v.onEvent(
    {
      ...env('model-published', 6100),
      version: 1,
      round: 1,
      sha256: 'a'.repeat(64),
      bytes: 10,
      chunks: 1,
      contributors: { 'site-a': 16 },
      metrics: {},
      modelDir: '/m',
    },
    6100,
  );
  let s = v.snapshot();
  assert.deepEqual(
    s.agents.map((a) => [a.agent, a.state, a.backend, a.window?.state, a.alerts.map((x) => x.code)]),
    [
      ['site-a', 'training', 'cpu', 'open', []],
      ['site-b', 'training', 'cpu', 'open', ['FL_OPCUA_UNREACHABLE']],
    ],
  );
  const r1 = s.rounds.find((r) => r.round === 1)!;
  assert.equal(r1.outcome, 'aggregate');
  assert.deepEqual([r1.agents['site-a']!.result, r1.agents['site-a']!.trainMs], ['trained', 800]);
  assert.deepEqual([r1.agents['site-b']!.result, r1.agents['site-b']!.waitedMs], ['failed', 3000], 'site-b waited 3 s for its window, then was rejected');
  assert.deepEqual(s.sites['site-a'], [{ version: 0, accuracy: 0.5, balancedAccuracy: 0.45, defectRecall: 0.25 }]);
  assert.deepEqual(
    s.models.map((m) => [m.version, m.stage]),
    [[1, 'latest']],
    'no release management seen: the newest is "latest"',
  );
  // An info alert with the same code clears the open one.
  v.onEvent({ ...env('alert', 7000), severity: 'info', code: 'FL_OPCUA_UNREACHABLE', message: 'PLC back', agent: 'site-b' }, 7000);
  v.onEvent(
    { ...env('command-result', 7100), verb: 'pause', requestId: 'r', status: 'accepted', detail: 'ok', by: 'aggregator', federationState: 'paused' },
    7100,
  );
  // Release management (another part of fedline): the stage follows its events.
  v.onEvent(
    { ...env('model-published', 8000), version: 2, round: 2, sha256: 'b'.repeat(64), bytes: 10, chunks: 1, contributors: {}, metrics: {}, modelDir: '/m' },
    8000,
  );
  v.onEvent({ ...env('model-released', 8100), version: 1 }, 8100);
  s = v.snapshot();
  assert.deepEqual(s.agents.find((a) => a.agent === 'site-b')!.alerts, []);
  assert.equal(s.federationState, 'paused');
  assert.equal(s.releasedVersion, 1);
  assert.deepEqual(
    s.models.map((m) => [m.version, m.stage]),
    [
      [2, 'candidate'],
      [1, 'released'],
    ],
  );
});

test('dashboard web server: page and assets with a strict CSP; login with back-off, HttpOnly SameSite session cookie; actions need the CSRF token and the same origin', async () => {
  const dir = tempDir('dashboard-http');
  const file = join(dir.path, 'operators.passwd');
  writeFileSync(file, `shift-lead:${hashPassword('right', 1000)}\n`);
  const sent: { verb: OperatorVerb; body: Record<string, unknown>; user: string }[] = [];
  const http = await startDashboardHttp({
    host: '127.0.0.1',
    port: 0,
    snapshot: () => ({ federation: 'x' }),
    operators: OperatorPasswords.load(file),
    sessionIdleMs: 60_000,
    sendCommand: async (verb, body, user) => {
      sent.push({ verb, body, user });
      return `dashboard-${sent.length}`;
    },
    log: silentLogger(),
    counters: new Counters(),
  });
  const url = (p: string) => new URL(p, http.url).href;
  const post = (p: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(url(p), { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  try {
    const page = await fetch(url('/'));
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<script type="module" src="\/app.js">/);
    assert.match(page.headers.get('content-security-policy')!, /default-src 'self'/);
    for (const asset of ['/app.js', '/charts.js', '/style.css']) assert.equal((await fetch(url(asset))).status, 200, asset);
    assert.deepEqual(await (await fetch(url('/api/state'))).json(), { federation: 'x' });

    assert.equal((await post('/api/command/pause', {})).status, 401, 'no action without a login');
    assert.equal((await post('/api/login', { username: 'shift-lead', password: 'wrong' })).status, 401);
    assert.equal((await post('/api/login', { username: 'shift-lead', password: 'right' })).status, 429, 'a failed login slows the next one');
    let login: Response | null = null;
    await waitFor('the back-off to pass', async () => (login = await post('/api/login', { username: 'shift-lead', password: 'right' })).status !== 429, 10_000);
    assert.equal(login!.status, 200);
    const cookie = login!.headers.get('set-cookie')!;
    assert.match(cookie, /HttpOnly/);
    assert.match(cookie, /SameSite=Strict/);
    const { csrf } = (await login!.json()) as { csrf: string };
    const session = cookie.split(';')[0]!;

    assert.equal((await post('/api/command/pause', {}, { cookie: session })).status, 403, 'no CSRF token');
    assert.equal((await post('/api/command/pause', {}, { cookie: session, 'x-csrf-token': 'x'.repeat(csrf.length) })).status, 403, 'wrong CSRF token');
    assert.equal((await post('/api/command/pause', {}, { cookie: session, 'x-csrf-token': csrf, origin: 'http://evil.example' })).status, 403, 'cross-origin');
    assert.equal((await post('/api/command/reboot', {}, { cookie: session, 'x-csrf-token': csrf })).status, 400);
    assert.equal((await post('/api/command/release', {}, { cookie: session, 'x-csrf-token': csrf })).status, 400, 'release needs a version');
    assert.deepEqual(sent, [], 'nothing refused reached MQTT');
    const ok = await post('/api/command/pause', { reason: 'audit' }, { cookie: session, 'x-csrf-token': csrf, origin: new URL(http.url).origin });
    assert.equal(ok.status, 202);
    assert.equal((await post('/api/command/release', { version: 3 }, { cookie: session, 'x-csrf-token': csrf })).status, 202);
    assert.deepEqual(sent, [
      { verb: 'pause', body: { reason: 'audit' }, user: 'shift-lead' },
      { verb: 'release', body: { version: 3 }, user: 'shift-lead' },
    ]);
    await post('/api/logout', {}, { cookie: session, 'x-csrf-token': csrf });
    assert.equal((await post('/api/command/pause', {}, { cookie: session, 'x-csrf-token': csrf })).status, 401, 'the session ended at logout');
  } finally {
    await http.close();
    dir.cleanup();
  }
});

test('a dashboard whose MQTT user is not an operator: the broker refuses its commands and the operator is told so', { timeout: 60_000 }, async () => {
  const dir = tempDir('dashboard-readonly');
  const base = testAccess(['site-a']);
  const access = accessFileSchema.parse({ ...base, users: [...base.users, { username: 'dashboard', role: 'dashboard' }] });
  const auth = writeAuthFiles(dir.path, access);
  const broker = await startBroker(
    parseConfig(brokerConfigSchema, { host: '127.0.0.1', port: 0, auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile } }, 'test broker'),
    silentLogger(),
  );
  const operators = join(dir.path, 'operators.passwd');
  writeFileSync(operators, `shift-lead:${hashPassword('right', 1000)}\n`);
  const dashboard = await startDashboard(
    parseConfig(
      dashboardConfigSchema,
      {
        federation: 'test',
        mqtt: { url: broker.url, reconnectPeriodMs: 200, ...auth.credentials('dashboard') },
        http: { port: 0 },
        operators: { passwordFile: operators },
      },
      'test dashboard',
    ),
    silentLogger(),
  );
  const mes = await mesObserver(broker.url, auth.credentials('auditor'));
  const commands: string[] = [];
  await mes.transport.subscribe('fl/test/cmd/+', (m) => commands.push(m.topic));
  try {
    const url = (p: string) => new URL(p, dashboard.url).href;
    const login = await fetch(url('/api/login'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'shift-lead', password: 'right' }),
    });
    const { csrf } = (await login.json()) as { csrf: string };
    const headers = { 'content-type': 'application/json', cookie: login.headers.get('set-cookie')!.split(';')[0]!, 'x-csrf-token': csrf };
    const res = await fetch(url('/api/command/pause'), { method: 'POST', headers, body: '{}' });
    assert.equal(res.status, 504);
    assert.match(((await res.json()) as { error: string }).error, /"operator": true/);
    assert.deepEqual(commands, [], 'nothing reached the command topic');
    // The dashboard goes on following the federation.
    await waitFor('the dashboard connected again', () => dashboard.transport.connected, 30_000);
    assert.equal((await fetch(url('/api/state'))).status, 200);
  } finally {
    await dashboard.close();
    await mes.close();
    await broker.close();
    dir.cleanup();
  }
});

test('fedline dashboard --help answers with its usage; without --config it says what is missing; demo takes --dashboard', () => {
  const cli = join(REPO_ROOT, 'dist/cli/main.js');
  const help = spawnSync(process.execPath, [cli, 'dashboard', '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /--config FILE/);
  const bare = spawnSync(process.execPath, [cli, 'dashboard'], { encoding: 'utf8' });
  assert.equal(bare.status, 2);
  assert.match(bare.stderr, /--config FILE is required/);
  assert.equal(parseDemoArgs(['--dashboard']).dashboard, true);
  assert.equal(parseDemoArgs([]).dashboard, false);
});
