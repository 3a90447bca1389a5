#!/usr/bin/env node
// What a V8 heap snapshot holds, by constructor (objects and closures) or node type: count and
// self size, largest first; with a second snapshot, the difference B - A per entry, largest growth
// first (docs/scaling.md: the aggregator at 10 and at 300 sites).
// usage: node scripts/heap-summary.mjs A.heapsnapshot [B.heapsnapshot] [N]   (N lines, default 25)
// Snapshots come from `--heapsnapshot-signal`, or MEMORY_PROBE_SNAPSHOT=1 with bench/memory-probe.js.
import { readFileSync } from 'node:fs';

const args = process.argv.slice(2);
const files = args.filter((a) => a.endsWith('.heapsnapshot'));
const n = Number(args.find((a) => /^\d+$/.test(a)) ?? 25);
if (files.length < 1 || files.length > 2) {
  console.error('usage: node scripts/heap-summary.mjs A.heapsnapshot [B.heapsnapshot] [N]');
  process.exit(2);
}

/** Map of entry -> [count, bytes], and the total bytes. */
function summarize(file) {
  const s = JSON.parse(readFileSync(file, 'utf8'));
  const fields = s.snapshot.meta.node_fields;
  const types = s.snapshot.meta.node_types[0];
  const [ti, ni, si] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f));
  const by = new Map();
  let total = 0;
  for (let i = 0; i < s.nodes.length; i += fields.length) {
    const type = types[s.nodes[i + ti]];
    const key = type === 'object' || type === 'closure' ? s.strings[s.nodes[i + ni]] || '(anonymous)' : `(${type})`;
    const e = by.get(key) ?? [0, 0];
    e[0] += 1;
    e[1] += s.nodes[i + si];
    by.set(key, e);
    total += s.nodes[i + si];
  }
  return { by, total };
}

const kib = (b) => (b / 1024).toFixed(0).padStart(9);
const a = summarize(files[0]);
if (files.length === 1) {
  console.log(`total ${(a.total / 2 ** 20).toFixed(2)} MiB`);
  for (const [k, [c, b]] of [...a.by].sort((x, y) => y[1][1] - x[1][1]).slice(0, n)) console.log(`${kib(b)} KiB ${String(c).padStart(8)}  ${k.slice(0, 80)}`);
} else {
  const b = summarize(files[1]);
  console.log(`total ${(a.total / 2 ** 20).toFixed(2)} -> ${(b.total / 2 ** 20).toFixed(2)} MiB`);
  const keys = new Set([...a.by.keys(), ...b.by.keys()]);
  const diff = [...keys].map((k) => {
    const [ca, ba] = a.by.get(k) ?? [0, 0];
    const [cb, bb] = b.by.get(k) ?? [0, 0];
    return { k, dc: cb - ca, db: bb - ba };
  });
  for (const d of diff.sort((x, y) => y.db - x.db).slice(0, n))
    console.log(`${kib(d.db)} KiB ${String(d.dc >= 0 ? `+${d.dc}` : d.dc).padStart(8)}  ${d.k.slice(0, 80)}`);
}
