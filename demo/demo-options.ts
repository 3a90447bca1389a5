import type { UpdateEncoding } from '../shared/bundle/value-encodings.js';
import type { Architecture } from '../training/models.js';

/** What one demo run does; cli/demo-cmd.ts builds it from the command line. */
export interface DemoOptions {
  rounds: number;
  out: string;
  seed: number;
  epochs: number;
  size: number;
  scale: number;
  /** always: agents train as soon as a round asks; opcua: only in the idle windows of a simulated PLC. */
  trigger: 'always' | 'opcua';
  /** The simulated PLC's cycle (--trigger opcua), STATE:SECONDS,... */
  plcSchedule: string;
  /** small-cnn (default, fast) or the paper's vgg11 / vgg16 / vgg19. */
  model: Architecture;
  /** all: every weight trains and travels (the paper's Process1); head: only the classifier head (Process2). */
  federate: 'all' | 'head';
  /** Filter-count multiplier of the model (VGG default 0.25 here, to stay quick on a CPU). */
  width: number;
  /** A tfjs layers model folder with pretrained weights (by layer name), or null for a seeded init. */
  initFrom: string | null;
  /** Learning rate of round 1 (decays 0.85 per round). */
  learningRate: number;
  /** Epochs of central pretraining on reference images before the federation (0: none, a seeded init). */
  pretrainEpochs: number;
  /** How agents encode their updates (f32, f16, q8) and whether as differences to the base model. */
  encoding: UpdateEncoding;
  delta: boolean;
  /** The aggregator's strategy by name (aggregator/strategy-registry.ts). */
  strategy: string;
  /** Also serve the dashboard (`fedline dashboard`) on a free loopback port, and keep it up after the federation until Ctrl-C. */
  dashboard: boolean;
}

/** The folders a demo run owns under its --out. */
export interface DemoDirs {
  data: string;
  state: string;
  config: string;
  logs: string;
}

/** One line of the demo's progress output, prefixed with the time since the start. */
export type Say = (line: string) => void;
