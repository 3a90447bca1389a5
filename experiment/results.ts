import type { EvalMetrics } from '../shared/protocol/messages.js';
import type { ArmName, ArmOptions, ExperimentConfig } from './config.js';
import type { Ranking } from './ranking.js';
import type { RoundRecord } from './rounds.js';

/** What `fedline experiment` writes to results.json (and renders into report.md): the data, every model's evaluation, the findings. */

export interface Site {
  id: string;
  dir: string;
}

export interface Probe {
  id: string;
  dir: string;
  /** The site whose product it shows, and the site whose defect it carries (when known). */
  product: string | null;
  defectOf: string | null;
}

export interface ModelResult {
  /** centralized, centralized-head, local-only:<site>, federated-all, federated-head, federated-random, recipe:<name> */
  id: string;
  /** A recipe is reported under the fixed federated arm of its federate and init. */
  arm: ArmName;
  /** The recipe's name, or null for the fixed arms. */
  recipe: string | null;
  /** What the config set for this arm or recipe (its overrides of `training` and `rounds`, federate, init, strategy, ...). */
  options: ArmOptions & { federate?: 'all' | 'head'; init?: 'pretrained' | 'random' };
  site: string | null;
  init: 'pretrained' | 'random';
  federate: 'all' | 'head';
  /** Federated arms: how batch normalisation crossed sites (average, pooled-statistics, local). */
  batchNorm?: 'average' | 'pooled-statistics' | 'local';
  rounds: RoundRecord[];
  roundsRun: number;
  epochsPerRound: number;
  /** Optimizer steps per round when the arm counts steps instead of epochs, else null. */
  localSteps: number | null;
  reason: string;
  /** The first round after which the model met the target on every site it is judged on (0: before training), or null. */
  roundsToTarget: number | null;
  /** Sites whose test splits decide "target reached". */
  targetSites: string[];
  bytes: { upPerRound: number; downPerRound: number; total: number; imagesMoved: number };
  /** Mean local training time per epoch and site, ms (as the trainer reports it); null when the arm counts steps. */
  msPerLocalEpoch: number | null;
  /** Test set id -> metrics: local-test (every site's test split pooled), site:<id>, external, probes, probe:<id>. */
  eval: Record<string, EvalMetrics>;
  confusionPngs: Record<string, string>;
  modelDir: string;
}

export interface Finding {
  claim: string;
  holds: boolean | null;
  detail: string;
}

export interface ExperimentResults {
  name: string;
  mode: 'in-process' | 'mqtt';
  backend: string;
  startedAt: string;
  durationMs: number;
  classes: string[];
  defectClass: string | null;
  targetAccuracy: number | null;
  config: ExperimentConfig;
  data: {
    sites: Record<string, { dir: string; train: number[]; test: number[] }>;
    external: { dir: string; count: number; perClass: number[] } | null;
    probes: Record<string, { dir: string; count: number; product: string | null; defectOf: string | null }>;
  };
  pretrained: { dir: string; reused: boolean; info: Record<string, unknown> | null } | null;
  /** The self-supervised site pass (pretrained.selfSupervised), when configured: the common start of the pretrained arms. */
  selfSupervised?: SelfSupervisedSummary | null;
  models: ModelResult[];
  findings: Finding[];
  /** The federated models ranked, and the goals checked (experiment/ranking.ts); one seed here, see MultiSeedResults. */
  ranking: Ranking;
}

/** `<out>/results.json` of a run over several seeds: each seed's own results.json is in `<out>/seed-<s>`. */
export interface MultiSeedResults {
  name: string;
  seeds: number[];
  startedAt: string;
  durationMs: number;
  config: ExperimentConfig;
  runs: { seed: number; dir: string; durationMs: number }[];
  ranking: Ranking;
}

export interface SelfSupervisedSummary {
  /** The adapted base (tfjs layers folder). */
  dir: string;
  settings: { rounds: number; epochs: number; batchSize: number; learningRate: number };
  trainMs: number;
  /** Per round: each site's pretext accuracy (rotation) of the averaged model before that round. */
  pretextAccuracy: Record<string, number>[];
  /** The final model's pretext accuracy, mean over the sites' test splits. */
  finalPretextAccuracy: number;
}
