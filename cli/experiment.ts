import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { UsageError } from './option-checks.js';
import { loadExperimentConfig, runExperiment, runSeeds } from '../experiment/runner.js';

import { EXPERIMENT_USAGE as USAGE } from './usage.js';

/** \`fedline experiment\`: wires the command line to experiment/runner.ts. */
export async function runExperimentCommand(args: string[]): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        config: { type: 'string', short: 'c' },
        out: { type: 'string' },
        mode: { type: 'string' },
        seeds: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message); // cli/main.ts prints it with the valid options (exit code 2)
  }
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  if (!values.config) {
    process.stderr.write(`fedline experiment: --config FILE is required\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  if (values.mode !== undefined && values.mode !== 'in-process' && values.mode !== 'mqtt') {
    process.stderr.write(`fedline experiment: --mode must be in-process or mqtt, got "${values.mode}"\n`);
    process.exitCode = 2;
    return;
  }
  let config;
  try {
    config = loadExperimentConfig(values.config);
  } catch (err) {
    process.stderr.write(`fedline experiment: ${(err as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  if (values.out) config = { ...config, out: resolve(values.out) };
  if (values.mode) config = { ...config, mode: values.mode as 'in-process' | 'mqtt' };
  if (values.seeds !== undefined) {
    const seeds = values.seeds.split(',').map((x) => Number(x.trim()));
    if (seeds.length === 0 || seeds.some((x) => !Number.isInteger(x) || x < 0) || new Set(seeds).size !== seeds.length) {
      process.stderr.write(`fedline experiment: --seeds must be distinct non-negative integers separated by commas, got "${values.seeds}"\n`);
      process.exitCode = 2;
      return;
    }
    config = { ...config, seeds };
  }
  const t0 = Date.now();
  const say = (line: string) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${line}\n`);
  if (config.seeds) {
    const multi = await runSeeds(config, say);
    say(`report: ${resolve(config.out, 'report.md')}   results: ${resolve(config.out, 'results.json')}`);
    for (const m of multi.ranking.models.filter((x) => x.rank !== null))
      say(`#${m.rank} ${m.id}: ${multi.ranking.scoreName} ${m.score ? `${(100 * m.score.mean).toFixed(1)}% ± ${(100 * m.score.sd).toFixed(1)}` : '-'}`);
    for (const g of multi.ranking.goals) say(`${g.holds === null ? 'n/a' : g.holds ? 'PASS' : 'FAIL'}: ${g.goal} (${g.detail})`);
    return;
  }
  const results = await runExperiment(config, say);
  say(`report: ${resolve(config.out, 'report.md')}   results: ${resolve(config.out, 'results.json')}`);
  for (const f of results.findings) say(`${f.holds ? 'holds' : 'does not hold'}: ${f.claim} (${f.detail})`);
  for (const g of results.ranking.goals) say(`${g.holds === null ? 'n/a' : g.holds ? 'PASS' : 'FAIL'}: ${g.goal} (${g.detail})`);
}
