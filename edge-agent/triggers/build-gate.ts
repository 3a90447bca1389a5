import { join } from 'node:path';
import { systemClock, type Clock } from '../../shared/util/async.js';
import { ErrorCodes, FedlineError } from '../../shared/protocol/errors.js';
import type { Logger } from '../../shared/util/logger.js';
import type { Command } from '../../shared/protocol/mes.js';
import { triggerLeaves, type TriggerSpec } from '../../shared/config/trigger-config.js';
import type { Topics } from '../../shared/protocol/topics.js';
import type { Transport } from '../../shared/transport/transport.js';
import type { GateNode } from './combine.js';
import { TriggerGate } from './gate.js';
import type { TriggerSource } from './source.js';
import { AlwaysSource } from './sources/always.js';
import { ManualTriggerSource } from './sources/manual-source.js';
import { MqttTriggerSource } from './sources/mqtt-source.js';
import { OpcuaTriggerSource } from './sources/opcua-source.js';
import { ScheduleTriggerSource } from './sources/schedule-source.js';

export interface GateDeps {
  transport: Transport;
  topics: Topics;
  agentId: string;
  /** The agent's state directory: default OPC UA certificate store, saved manual state. */
  stateDir: string;
  log: Logger;
  clock?: Clock;
  /** A pause/resume command this agent acted on. */
  onCommand?: (verb: 'pause' | 'resume', command: Command) => void;
  /** A malformed command (logged and counted by the caller). */
  onReject?: (err: unknown, topic: string) => void;
}

/**
 * Build the agent's trigger gate from its config. Operator commands always count: when the tree
 * has no `manual` source, one (initially open) is added with `all`, so that `<root>/cmd/pause`
 * stops training on every agent whatever its other conditions. A `manual` source written into the
 * tree is used where it stands (e.g. `any` of an OPC UA idle signal and an operator's resume).
 */
export function buildGate(spec: TriggerSpec, deps: GateDeps): TriggerGate {
  const clock = deps.clock ?? systemClock;
  const sources: TriggerSource[] = [];
  const used = new Map<string, number>();
  const uniqueId = (id: string) => {
    const n = (used.get(id) ?? 0) + 1;
    used.set(id, n);
    return n === 1 ? id : `${id} #${n}`;
  };
  const manualFor = (initially: 'open' | 'closed') =>
    new ManualTriggerSource({
      transport: deps.transport,
      topics: deps.topics,
      agentId: deps.agentId,
      initially,
      stateFile: join(deps.stateDir, 'manual-window.json'),
      log: deps.log,
      ...(deps.onCommand ? { onCommand: deps.onCommand } : {}),
      ...(deps.onReject ? { onReject: deps.onReject } : {}),
    });
  const build = (s: TriggerSpec): GateNode => {
    if (s.type === 'all' || s.type === 'any') return { kind: s.type, children: s.sources.map(build) };
    let source: TriggerSource;
    switch (s.type) {
      case 'always':
        source = new AlwaysSource();
        break;
      case 'schedule':
        source = new ScheduleTriggerSource(s, clock);
        break;
      case 'manual':
        source = manualFor(s.initially);
        break;
      case 'mqtt':
        source = new MqttTriggerSource(s, deps.transport, deps.log.child({ module: 'mes-trigger' }), clock, undefined, deps.onReject);
        break;
      case 'opcua':
        source = new OpcuaTriggerSource({ spec: s, pkiDir: s.pkiDir ?? join(deps.stateDir, 'opcua-pki'), log: deps.log, clock });
        break;
    }
    const id = uniqueId(source.id);
    if (id !== source.id) Object.defineProperty(source, 'id', { value: id });
    sources.push(source);
    return { kind: 'source', id };
  };
  const manuals = triggerLeaves(spec).filter((l) => l.type === 'manual').length;
  if (manuals > 1)
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, 'trigger: at most one "manual" source (all of them would follow the same pause/resume commands)');
  let root = build(spec);
  if (manuals === 0) {
    const manual = manualFor('open');
    sources.push(manual);
    root = { kind: 'all', children: [{ kind: 'source', id: manual.id }, root] };
  }
  return new TriggerGate(root, sources, clock);
}
