// The dashboard page: renders the server's view (GET /api/state, then Server-Sent Events on
// /api/events) and sends operator actions (POST /api/command/<verb> with the session's CSRF token).
// Every text from the federation goes in with textContent: a site's status detail is never HTML.
import { lineChart, SITE_COLORS } from './charts.js';

const $ = (id) => document.getElementById(id);
let session = { operatorsEnabled: false, user: null, csrf: null };
let last = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'title') e.title = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

const pill = (text, cls = text) => el('span', { class: `pill ${cls}` }, text);
const pct = (x) => (x === null || x === undefined ? '–' : x.toFixed(3));
const mb = (bytes) => (bytes === null || bytes === undefined ? '–' : `${(bytes / 1e6).toFixed(2)} MB`);
const secs = (ms) => (ms === null || ms === undefined ? '–' : `${(ms / 1000).toFixed(1)} s`);
const clock = (ts) => new Date(ts).toLocaleTimeString([], { hour12: false });

function ago(ts) {
  const s = Math.max(0, Math.round((Date.now() - ts) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function renderHeader(v) {
  $('federation').textContent = v.federation;
  const state = $('fed-state');
  state.textContent = v.federationState;
  state.className = `pill ${v.federationState}`;
  const bits = [];
  if (v.finalVersion !== null) bits.push(`final model v${v.finalVersion}`);
  if (v.releasedVersion !== null) bits.push(`released v${v.releasedVersion}`);
  $('fed-detail').textContent = bits.join(' · ');
}

function renderAgents(v) {
  const body = $('agents').tBodies[0];
  body.replaceChildren(
    ...v.agents.map((a) => {
      const progress =
        a.progress !== null && a.progress !== undefined ? el('span', { class: 'progress', title: `${Math.round(a.progress * 100)} %` }, el('span')) : null;
      if (progress) progress.firstChild.style.width = `${Math.round(a.progress * 100)}%`;
      const win = a.window ? el('td', {}, pill(a.window.state), el('span', { class: 'detail', title: a.window.detail }, a.window.detail)) : el('td', {}, '–');
      return el(
        'tr',
        { 'data-agent': a.agent },
        el('td', {}, el('strong', {}, a.agent)),
        el('td', {}, pill(a.state), progress, a.detail ? el('span', { class: 'detail', title: a.detail }, a.detail) : null),
        el('td', { class: 'num' }, a.round ?? '–'),
        win,
        el('td', {}, a.backend ?? '–'),
        el('td', { class: 'num' }, a.samples ? `${a.samples.train} train / ${a.samples.test} test` : '–'),
        el('td', { class: 'num', title: new Date(a.lastSeen).toISOString() }, ago(a.lastSeen)),
        el('td', {}, ...(a.alerts.length ? a.alerts.map((x) => el('span', { class: `alert-badge ${x.severity}`, title: x.message }, x.code)) : ['none'])),
      );
    }),
  );
  $('no-agents').hidden = v.agents.length > 0;
}

function renderCharts(v) {
  const sites = Object.keys(v.sites);
  const series = (key) =>
    sites.map((s, i) => ({
      name: s,
      color: SITE_COLORS[i % SITE_COLORS.length],
      points: v.sites[s].filter((p) => p[key] !== null).map((p) => ({ x: p.version, y: p[key] })),
    }));
  lineChart($('chart-accuracy'), series('accuracy'), 'accuracy');
  lineChart($('chart-balanced'), series('balancedAccuracy'), 'balanced accuracy');
  lineChart($('chart-recall'), series('defectRecall'), 'defect recall');
  $('recall-caption').textContent = `defect recall (${v.defectClass})`;
  $('legend').replaceChildren(
    ...sites.map((s, i) => {
      const sw = el('span', { class: 'swatch' });
      sw.style.background = SITE_COLORS[i % SITE_COLORS.length];
      return el('span', {}, sw, s);
    }),
  );
}

function siteChips(r) {
  return Object.entries(r.agents).map(([agent, a]) => {
    const parts = [];
    if (a.waitedMs > 0 || a.states.includes('waiting-window'))
      parts.push(el('span', { class: 'chip waited', title: `waited ${secs(a.waitedMs)} for the training window` }, `${agent} waited ${secs(a.waitedMs)}`));
    if (a.pausedMs > 0 || a.states.includes('paused'))
      parts.push(el('span', { class: 'chip paused', title: `paused ${secs(a.pausedMs)}` }, `${agent} paused ${secs(a.pausedMs)}`));
    const label =
      a.result === 'trained'
        ? `${agent} ${a.trainMs !== null ? secs(a.trainMs) : ''}`
        : `${agent} ${a.result === 'open' ? (a.states.at(-1) ?? 'selected') : a.result}`;
    parts.push(el('span', { class: `chip ${a.result}` }, label.trim()));
    return el('span', {}, ...parts);
  });
}

function renderRounds(v) {
  const maxMs = Math.max(1, ...v.rounds.map((r) => r.durationMs ?? 0));
  $('rounds').tBodies[0].replaceChildren(
    ...v.rounds.map((r) => {
      const bar = el('span', { class: 'dur' });
      bar.style.width = `${Math.max(2, Math.round(((r.durationMs ?? 0) / maxMs) * 120))}px`;
      const model = r.newVersion !== null ? `v${r.baseVersion} → v${r.newVersion}` : `v${r.baseVersion}`;
      return el(
        'tr',
        { 'data-round': r.round },
        el('td', { class: 'num' }, el('strong', {}, r.round), ' ', el('span', { class: 'muted' }, r.kind)),
        el(
          'td',
          {},
          r.outcome ? pill(r.outcome, r.outcome === 'keep' ? 'paused' : 'complete') : pill('running'),
          r.reason ? el('span', { class: 'detail', title: r.reason }, r.reason) : null,
        ),
        el('td', {}, model),
        el('td', {}, ...siteChips(r)),
        el('td', { class: 'num' }, r.durationMs !== null ? bar : null, r.durationMs !== null ? secs(r.durationMs) : `since ${clock(r.startedAt)}`),
        el('td', { class: 'num' }, `${mb(r.bytesUp)} / ${mb(r.bytesDown)}`),
      );
    }),
  );
  $('no-rounds').hidden = v.rounds.length > 0;
}

function modelQuality(v, version) {
  const pts = Object.values(v.sites).flatMap((points) => points.filter((p) => p.version === version));
  const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
  return { accuracy: mean(pts.map((p) => p.accuracy)), recall: mean(pts.map((p) => p.defectRecall).filter((x) => x !== null)) };
}

function renderModels(v) {
  $('models').tBodies[0].replaceChildren(
    ...v.models.map((m) => {
      const q = modelQuality(v, m.version);
      const ops = el('td', { class: 'op-only' });
      if (session.user) {
        if (m.stage !== 'released') ops.append(actionButton('release', 'Release', { version: m.version }));
        if (m.stage === 'released' || m.version === v.releasedVersion) ops.append(actionButton('rollback', 'Roll back', {}));
      }
      return el(
        'tr',
        { 'data-version': m.version },
        el('td', { class: 'num' }, el('strong', {}, `v${m.version}`)),
        el('td', {}, pill(m.stage), m.stageDetail ? el('span', { class: 'detail', title: m.stageDetail }, m.stageDetail) : null),
        el('td', { class: 'num' }, m.round),
        el('td', { class: 'num' }, pct(q.accuracy)),
        el('td', { class: 'num' }, pct(q.recall)),
        el(
          'td',
          {},
          Object.entries(m.contributors)
            .map(([a, n]) => `${a} ${n}`)
            .join(', ') || '–',
        ),
        el('td', { title: m.sha256 ?? '' }, el('code', {}, m.sha256 ? `${m.sha256.slice(0, 12)}…` : '–')),
        el('td', {}, m.signature ? el('span', { title: m.signature }, '✔ signed') : el('span', { class: 'muted' }, m.sha256 ? 'unsigned' : '–')),
        ops,
      );
    }),
  );
  $('no-models').hidden = v.models.length > 0;
}

function renderLogs(v) {
  $('alerts').replaceChildren(
    ...v.alerts.map((a) =>
      el(
        'li',
        {},
        el('span', { class: 'time' }, clock(a.ts)),
        el('span', { class: `sev-${a.severity}` }, a.code),
        ' ',
        a.agent ? `${a.agent}: ` : '',
        a.message,
      ),
    ),
  );
  if (!v.alerts.length) $('alerts').append(el('li', { class: 'muted' }, 'none'));
  $('commands').replaceChildren(
    ...v.commands.map((c) => el('li', {}, el('span', { class: 'time' }, clock(c.ts)), el('strong', {}, c.verb), ` ${c.status} by ${c.by}: `, c.detail)),
  );
  if (!v.commands.length) $('commands').append(el('li', { class: 'muted' }, 'none'));
}

function render(v) {
  last = v;
  renderHeader(v);
  renderAgents(v);
  renderCharts(v);
  renderRounds(v);
  renderModels(v);
  renderLogs(v);
  document.body.dataset.updatedAt = String(v.updatedAt);
}

function actionButton(verb, label, body) {
  const b = el('button', { type: 'button', 'data-verb': verb }, label);
  b.addEventListener('click', () => act(verb, body));
  return b;
}

async function act(verb, body = {}) {
  const msg = $('action-msg');
  const reason = $('reason').value.trim();
  msg.textContent = `sending ${verb}…`;
  const res = await fetch(`/api/command/${verb}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-csrf-token': session.csrf ?? '' },
    body: JSON.stringify({ ...body, ...(reason ? { reason } : {}) }),
  });
  const answer = await res.json().catch(() => ({}));
  msg.textContent = res.ok ? `${verb} sent (${answer.requestId}); the answer appears under Commands` : `${verb} refused: ${answer.error ?? res.status}`;
  if (res.status === 401) await loadSession();
}

function renderSession() {
  const loggedIn = Boolean(session.user);
  $('login-form').hidden = !session.operatorsEnabled || loggedIn;
  $('readonly').hidden = session.operatorsEnabled;
  $('who').hidden = !loggedIn;
  $('who').textContent = loggedIn ? `operator ${session.user}` : '';
  $('logout').hidden = !loggedIn;
  $('actions').hidden = !loggedIn;
  if (last) renderModels(last);
}

async function loadSession() {
  session = await (await fetch('/api/session')).json();
  renderSession();
}

function wire() {
  for (const b of document.querySelectorAll('#actions button[data-verb]')) b.addEventListener('click', () => act(b.dataset.verb));
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const res = await fetch('/api/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: $('login-user').value, password: $('login-password').value }),
    });
    const answer = await res.json().catch(() => ({}));
    $('login-password').value = '';
    if (!res.ok) {
      $('who').hidden = false;
      $('who').textContent = answer.error ?? 'login refused';
      return;
    }
    session = { ...session, user: answer.user, csrf: answer.csrf };
    renderSession();
  });
  $('logout').addEventListener('click', async () => {
    await fetch('/api/logout', { method: 'POST', headers: { 'x-csrf-token': session.csrf ?? '' } });
    await loadSession();
  });
  const events = new EventSource('/api/events');
  events.addEventListener('state', (ev) => render(JSON.parse(ev.data)));
  events.addEventListener('open', () => {
    $('conn').className = 'conn up';
    $('conn').textContent = 'live';
  });
  events.addEventListener('error', () => {
    $('conn').className = 'conn down';
    $('conn').textContent = 'reconnecting';
  });
  // "last seen" ages even when nothing new arrives.
  setInterval(() => last && renderAgents(last), 5000);
}

wire();
loadSession();
