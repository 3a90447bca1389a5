#!/usr/bin/env node
// Where a V8 sampling heap profile's allocations came from (garbage included, with
// MEMORY_PROBE_ALLOC=1 of bench/memory-probe.ts), largest first, in MiB: by the innermost fedline
// function on the stack (`app`, the default: what our code asked for, library calls included), or
// by the allocating function itself (`self`). docs/scaling.md, "Where the 1 MB peak is".
// usage: node scripts/alloc-top.mjs FILE.heapprofile [N] [app|self]   (N lines, default 25)
import { readFileSync } from 'node:fs';

const [file, nLines = '25', mode = 'app'] = process.argv.slice(2);
if (!file || !['app', 'self'].includes(mode)) {
  console.error('usage: node scripts/alloc-top.mjs FILE.heapprofile [N] [app|self]');
  process.exit(2);
}
const APP = /\/dist\/(aggregator|edge-agent|broker|plant|shared|cli|training|experiment|bench)\//;
const profile = JSON.parse(readFileSync(file, 'utf8'));
const bytesBy = new Map();
let total = 0;
// Iterative walk: stacks can be deep.
const todo = [{ node: profile.head, app: null }];
while (todo.length) {
  const { node, app } = todo.pop();
  const cf = node.callFrame;
  const key = `${cf.functionName || '(anonymous)'} ${cf.url.split('/').slice(-2).join('/')}:${cf.lineNumber + 1}`;
  const here = APP.test(cf.url) ? key : app;
  const size = node.selfSize ?? 0;
  total += size;
  const k = mode === 'self' ? key : (here ?? `(outside fedline) ${key}`);
  bytesBy.set(k, (bytesBy.get(k) ?? 0) + size);
  for (const child of node.children ?? []) todo.push({ node: child, app: here });
}
console.log(`allocated (sampled) ${(total / 2 ** 20).toFixed(1)} MiB`);
for (const [k, v] of [...bytesBy].sort((a, b) => b[1] - a[1]).slice(0, Number(nLines))) console.log(`${(v / 2 ** 20).toFixed(2).padStart(9)}  ${k}`);
