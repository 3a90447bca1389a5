#!/usr/bin/env node
// `npm run bench:logins`: an honest client's PUBACK latency while 20 wrong-password logins a second
// (PBKDF2, 100,000 rounds) hit the embedded broker, run as its own process. Each pass runs the
// login-flood test of test/broker-hardening.test.ts (which checks that the flood does not slow the
// honest client: the password check is off the event loop) and records its medians: without the
// flood, with 20 bad logins/s from one address (shut out after 5 failures) and from a new address
// each time (every one a full PBKDF2 check). Prints each pass, the median over the passes, the
// ratio to the quiet median, and the target (under 5 ms median under either flood).
// usage: node scripts/login-bench.mjs [--repeat N]   (after `npm run build`; default 3 passes)
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = process.argv.slice(2);
const at = args.indexOf('--repeat');
const repeat = at >= 0 ? Number(args[at + 1]) : 3;
if (!Number.isInteger(repeat) || repeat < 1) {
  console.error(`--repeat must be a whole number of passes >= 1, got ${args[at + 1]}`);
  process.exit(2);
}
const TARGET_MS = 5;
const testFile = new URL('../dist/test/broker-hardening.test.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'fedline-logins-'));
const report = join(dir, 'logins.jsonl');
let failed = 0;
for (let i = 1; i <= repeat; i++) {
  console.log(`pass ${i} of ${repeat}: ${testFile}, the login-flood test`);
  const run = spawnSync(process.execPath, ['--test', '--test-name-pattern=bad logins per second', testFile], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, FEDLINE_LOGIN_REPORT: report },
    encoding: 'utf8',
  });
  if (run.status !== 0) {
    failed++;
    console.log(run.stdout);
    console.log(`pass ${i}: the test failed (exit ${run.status})`);
  }
}
const passes = (() => {
  try {
    return readFileSync(report, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
})();
rmSync(dir, { recursive: true, force: true });
if (passes.length === 0) {
  console.error('no pass recorded its figures (did `npm run build` run?)');
  process.exit(1);
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ms = (x) => x.toFixed(2);
console.log('');
console.log('| pass | quiet median ms | one address: median ms (ratio) | new addresses: median ms (ratio) |');
console.log('|---|---:|---:|---:|');
passes.forEach((p, i) =>
  console.log(
    `| ${i + 1} | ${ms(p.baselineMs)} | ${ms(p.oneAddressMs)} (${(p.oneAddressMs / p.baselineMs).toFixed(2)}) | ${ms(p.newAddressesMs)} (${(p.newAddressesMs / p.baselineMs).toFixed(2)}) |`,
  ),
);
const q = median(passes.map((p) => p.baselineMs));
const one = median(passes.map((p) => p.oneAddressMs));
const many = median(passes.map((p) => p.newAddressesMs));
console.log(`| median of ${passes.length} | ${ms(q)} | ${ms(one)} (${(one / q).toFixed(2)}) | ${ms(many)} (${(many / q).toFixed(2)}) |`);
console.log('');
const worst = Math.max(one, many);
console.log(
  `target: an honest PUBACK under ${TARGET_MS} ms median under either flood: ${worst < TARGET_MS ? 'met' : 'NOT met'} (${ms(worst)} ms, median over the passes)`,
);
process.exit(failed > 0 ? 1 : 0);
