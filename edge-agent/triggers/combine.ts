/**
 * The trigger gate's decision, pure: the states of the sources in, the window's state out.
 * "Unknown" (an OPC UA server that does not answer, an MES topic never seen) never counts as
 * open: the agent does not train while the line state is unknown.
 */

export type WindowState = 'open' | 'closed' | 'unknown';

export interface SourceState {
  state: WindowState;
  /** Why, for people: "ns=1;s=Line1.State = \"Running\" (needs == \"Idle\")". */
  detail: string;
  /** Since when (epoch ms). */
  since: number;
}

export type GateNode = { kind: 'source'; id: string } | { kind: 'all' | 'any'; children: GateNode[] };

export interface GateDecision {
  state: WindowState;
  /** True only when the state is open. */
  open: boolean;
  /** Why: the sources that decide it, e.g. "opcua Line1.State: \"Running\" (needs == \"Idle\")". */
  detail: string;
}

function node(n: GateNode, states: ReadonlyMap<string, SourceState>): { state: WindowState; deciding: string[] } {
  if (n.kind === 'source') {
    const s = states.get(n.id) ?? { state: 'unknown', detail: 'not started', since: 0 };
    return { state: s.state, deciding: [`${n.id}: ${s.detail}`] };
  }
  const results = n.children.map((c) => node(c, states));
  const pick = (state: WindowState) => results.filter((r) => r.state === state).flatMap((r) => r.deciding);
  if (n.kind === 'all') {
    if (results.some((r) => r.state === 'closed')) return { state: 'closed', deciding: pick('closed') };
    if (results.some((r) => r.state === 'unknown')) return { state: 'unknown', deciding: pick('unknown') };
    return { state: 'open', deciding: pick('open') };
  }
  if (results.some((r) => r.state === 'open')) return { state: 'open', deciding: pick('open') };
  if (results.some((r) => r.state === 'unknown')) return { state: 'unknown', deciding: [...pick('unknown'), ...pick('closed')] };
  return { state: 'closed', deciding: pick('closed') };
}

/** all: open when every child is open; any: open when one is. Closed beats unknown in `all`, open beats both in `any`. */
export function decide(root: GateNode, states: ReadonlyMap<string, SourceState>): GateDecision {
  const r = node(root, states);
  return { state: r.state, open: r.state === 'open', detail: r.deciding.join('; ') };
}

/**
 * A lower bound on when the gate can open: `now` when it may open any moment (or is open),
 * a later time when a schedule keeps it shut until then, Infinity when it never opens.
 * `sourceBound` gives each source's own bound: a schedule knows its next window, an OPC UA or
 * MES source does not (null: no bound, the line may go idle at any moment).
 */
export function openNotBefore(root: GateNode, now: number, sourceBound: (id: string) => number | null): number | null {
  if (root.kind === 'source') return sourceBound(root.id);
  const bounds = root.children.map((c) => openNotBefore(c, now, sourceBound));
  if (root.kind === 'all') {
    // Every child must be open at once: not before the latest of the known bounds.
    const known = bounds.filter((b): b is number => b !== null);
    return known.length ? Math.max(now, ...known) : null;
  }
  // Any child suffices: a child without a bound may open at any moment.
  if (bounds.some((b) => b === null)) return null;
  return Math.max(now, Math.min(...(bounds as number[])));
}
