import type { BlockSink, TensorBlockReader } from '../shared/fl/fedavg.js';
import type { TensorSpec } from '../shared/bundle/tensor-bundle.js';
import type { EvalMetrics, TrainTask } from '../shared/protocol/messages.js';
import type { Failure, RoundKind } from './round-state.js';

/**
 * The federated-learning decisions of a round behind one interface, shaped like Flower's Strategy
 * (configure_fit / aggregate_fit / evaluate): which agents take part and with which task, how the
 * accepted updates become the next global model, and whether the model is good enough. Strategies
 * never see MQTT or the file system: updates come as block readers and new weights leave through a
 * block sink, so a strategy's memory need not grow with the model's size or the number of clients.
 *
 * A new strategy (robust aggregation, a server optimizer) is one file implementing this interface
 * plus one line in aggregator/strategy-registry.ts; the aggregator config's `strategy` names it.
 * Screening steps such as NormScreen (aggregator/norm-screen.ts) wrap any strategy.
 */
export interface Strategy {
  readonly name: string;
  /** Flower's configure_fit / configure_evaluate: who takes part in a new round and which task they run. */
  configureRound(setup: RoundSetup): RoundConfig;
  /** Flower's aggregate_fit: the round's accepted updates (results) and failures, as data, into new weights. */
  aggregate(input: StrategyInput): Promise<StrategyOutput>;
  /** Flower's evaluate: whether the model, as the agents measured it, meets the target (then the federation ends). */
  evaluate(input: EvaluateInput): { targetReached: boolean };
  /**
   * Strategies that send the agents more than the model (SCAFFOLD's server variate c): the values
   * that go with global model `version`, published with the round based on it; null: nothing (zero).
   */
  controlVariate?(version: number, federated: readonly { name: string; length: number }[]): Promise<ControlVariate | null>;
}

/** Values the agents receive besides the model, one float32 array per federated tensor (by name). */
export interface ControlVariate {
  version: number;
  tensors: ReadonlyMap<string, Float32Array>;
}

export interface RoundSetup {
  round: number;
  kind: RoundKind;
  /** Member agents online now, in the configuration's order. */
  available: readonly string[];
  /** Training rounds closed before this one (the learning-rate schedule counts them). */
  trainRoundsBefore: number;
}

export interface RoundConfig {
  selected: readonly string[];
  /** The local training task announced with the round. */
  task: TrainTask;
}

export interface StrategyInput {
  round: number;
  /** Layout of the federated tensors in the global model. */
  federated: readonly Pick<TensorSpec, 'name' | 'shape'>[];
  /** One reader per accepted update: `id` is the agent, `weight` its sample count; values are float32 weights (deltas already added to the base). */
  results: readonly TensorBlockReader[];
  /** Selected agents whose update was refused or never came. */
  failures: readonly Failure[];
  /** The round's base model (the current global model), for strategies that look at each update's change. */
  base: TensorBlockReader;
  /** The base's model version and the one being made: strategies with server state (server-optimizer-strategy.ts) key their state files by them. */
  versions?: { base: number; next: number };
  /** Fewer results than this: keep the global model. */
  minClients: number;
  /** Where new weights go: every federated tensor, in the order of `federated`, blocks ascending. */
  output: BlockSink;
}

export type StrategyOutput = ({ kind: 'weights' } | { kind: 'keep'; reason: string }) & {
  /** Accepted updates the strategy refused: they left the average and become failures of the round. */
  refused?: readonly Failure[];
};

export interface EvaluateInput {
  /** The base model's metrics on each agent's local test split, as reported. */
  metrics: Readonly<Record<string, EvalMetrics | undefined>>;
  selected: readonly string[];
  targetAccuracy: number | null;
}
