import type { RoundRecord } from '../aggregator/aggregator.js';
import type { Topics } from '../shared/protocol/topics.js';
import type { MqttTransport } from '../shared/transport/mqtt-transport.js';
import type { Say } from './demo-options.js';
import { mb, type WindowStats } from './summary.js';

/** Time each agent spends outside its training window, per round, from the status messages an MES sees. */
export class WindowTally {
  private readonly stats = new Map<string, WindowStats>();
  private readonly current = new Map<string, { state: string; round: number | null; since: number }>();

  private entry(round: number, agent: string): WindowStats {
    const key = `${round}/${agent}`;
    let e = this.stats.get(key);
    if (!e) this.stats.set(key, (e = { waitedMs: 0, pausedMs: 0, pauses: 0 }));
    return e;
  }

  observe(agent: string, state: string, round: number | null, now: number): void {
    const prev = this.current.get(agent);
    if (prev && prev.state === state && prev.round === round) return;
    this.close(agent, now);
    if (round !== null && state === 'paused') this.entry(round, agent).pauses++;
    this.current.set(agent, { state, round, since: now });
  }

  private close(agent: string, now: number): void {
    const prev = this.current.get(agent);
    if (!prev || prev.round === null) return;
    if (prev.state === 'waiting-window') this.entry(prev.round, agent).waitedMs += now - prev.since;
    if (prev.state === 'paused') this.entry(prev.round, agent).pausedMs += now - prev.since;
    prev.since = now;
  }

  of(round: number, agents: readonly string[]): Record<string, WindowStats> {
    return Object.fromEntries(agents.map((a) => [a, { ...(this.stats.get(`${round}/${a}`) ?? { waitedMs: 0, pausedMs: 0, pauses: 0 }) }]));
  }

  describe(round: number, agents: readonly string[], now: number): string {
    for (const a of agents) if (this.current.get(a)?.round === round) this.close(a, now);
    return agents
      .map((a) => {
        const w = this.of(round, [a])[a]!;
        return `${a} waited ${(w.waitedMs / 1000).toFixed(1)} s${w.pauses ? `, paused ${w.pauses}x ${(w.pausedMs / 1000).toFixed(1)} s` : ''}`;
      })
      .join('; ');
  }
}

/**
 * Print what an MES would see of the federation (agents' state changes, rounds, models, alerts)
 * from the observer's subscriptions, and tally the agents' training windows (--trigger opcua).
 */
export async function followProgress(
  observer: MqttTransport,
  topics: Topics,
  agents: readonly string[],
  trigger: 'always' | 'opcua',
  say: Say,
): Promise<WindowTally> {
  const windows = new WindowTally();
  await followStatus(observer, topics, windows, say);
  await followEvents(observer, topics, agents, trigger === 'opcua' ? windows : null, say);
  return windows;
}

/** Agents' state changes as they happen, and a progress line at most every 4 s while any is busy. */
async function followStatus(observer: MqttTransport, topics: Topics, windows: WindowTally, say: Say): Promise<void> {
  const states = new Map<string, string>();
  let lastProgressLine = 0;
  await observer.subscribe(topics.statusAll(), (m) => {
    try {
      const s = JSON.parse(m.payload.toString('utf8')) as {
        agent: string;
        state: string;
        progress: number | null;
        detail: string | null;
        round: number | null;
      };
      const prev = states.get(s.agent)?.split(' ')[0];
      windows.observe(s.agent, s.state, s.round, Date.now());
      const progress = s.progress !== null ? ` ${Math.round(s.progress * 100)}%` : '';
      states.set(s.agent, `${s.state}${progress}`);
      if (prev !== s.state && s.state !== 'offline') say(`  ${s.agent.padEnd(8)} ${s.state}${s.detail ? `: ${s.detail}` : ''}`);
      if (
        Date.now() - lastProgressLine > 4000 &&
        [...states.values()].some((v) => v.startsWith('training') || v.startsWith('uploading') || v.startsWith('downloading'))
      ) {
        lastProgressLine = Date.now();
        say(
          `  progress: ${[...states.entries()]
            .sort()
            .map(([a, v]) => `${a} ${v}`)
            .join(' | ')}`,
        );
      }
    } catch {
      // not our business to validate here; the aggregator counts bad status messages
    }
  });
}

/** Rounds started and completed, models published, alerts; with a window tally, each round's training windows. */
async function followEvents(observer: MqttTransport, topics: Topics, agents: readonly string[], windows: WindowTally | null, say: Say): Promise<void> {
  await observer.subscribe(topics.eventsAll(), (m) => {
    try {
      const e = JSON.parse(m.payload.toString('utf8')) as Record<string, unknown> & { type: string };
      if (e.type === 'round-started') say(`round ${e.round} started (${e.kind}, base model v${e.baseVersion}, agents ${(e.selected as string[]).join(', ')})`);
      else if (e.type === 'round-completed') {
        const r = e as unknown as RoundRecord;
        say(
          `round ${r.round} completed: ${r.outcome}${r.newVersion !== null ? ` -> model v${r.newVersion}` : ''}, ${r.participants.length} update(s), ` +
            `up ${mb(r.bytesUp)} MB, down ${mb(r.bytesDown)} MB, ${((r.durationMs ?? 0) / 1000).toFixed(1)} s`,
        );
        if (windows) say(`  training windows in round ${r.round}: ${windows.describe(r.round, agents, Date.now())}`);
      } else if (e.type === 'model-published') say(`model v${e.version} published (${mb(Number(e.bytes))} MB, sha256 ${String(e.sha256).slice(0, 12)}…)`);
      else if (e.type === 'model-validated' || e.type === 'model-rejected' || e.type === 'model-released' || e.type === 'model-rolled-back')
        say(releaseLine(e));
      else if (e.type === 'alert') say(`ALERT ${e.code}: ${e.message}`);
    } catch {
      // ignore
    }
  });
}

/** One line per release event: the version, the sites' balanced accuracy, and why. */
function releaseLine(e: Record<string, unknown>): string {
  const sites = Object.entries((e.sites ?? {}) as Record<string, { balancedAccuracy: number }>)
    .map(([a, m]) => `${a} ${m.balancedAccuracy.toFixed(3)}`)
    .join(', ');
  const failures = ((e.failures ?? []) as { agent: string | null; gate: string; value: number; limit: number }[])
    .map((f) => `${f.agent ?? 'sites'} ${f.gate} ${f.value.toFixed(3)} (limit ${f.limit})`)
    .join('; ');
  const against = e.against !== null && e.against !== undefined ? ` vs released v${e.against}` : '';
  switch (e.type) {
    case 'model-validated':
      return `model v${e.version} validated${against} (${sites})${e.mode === 'approve' ? '; waiting for an operator release' : ''}`;
    case 'model-rejected':
      return `model v${e.version} rejected${against}: ${failures}`;
    case 'model-released':
      return `model v${e.version} released by ${e.by} (was v${e.previous ?? '-'}; ${sites || 'no site metrics'})`;
    default:
      return `model rolled back from v${e.from} to v${e.version} by ${e.by}${e.reason ? ` (${e.reason})` : ''}`;
  }
}
