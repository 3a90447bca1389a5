import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { deferred, systemClock, withTimeout, type Clock } from '../../../shared/util/async.js';
import { ErrorCodes, FedlineError, type ErrorCode } from '../../../shared/protocol/errors.js';
import type { Logger } from '../../../shared/util/logger.js';
import type { OpcuaSource as OpcuaSpec } from '../../../shared/config/trigger-config.js';
import { backoffDelayMs } from '../backoff.js';
import { conditionCanHold, conditionHolds, describeCondition, toScalar } from '../condition.js';
import { loadOpcua, pemToDer, type Opcua } from '../opcua-runtime.js';
import { ProblemSet } from '../problem-set.js';
import type { SourceCallbacks, TriggerSource } from '../source.js';
import { classifyOpcuaFailure, findCertificateFile, firstCertificate, type Failure } from './opcua-faults.js';

export interface OpcuaSourceOptions {
  spec: OpcuaSpec;
  /** The client's certificate store (see OpcuaSpec.pkiDir); the caller resolves the default. */
  pkiDir: string;
  log: Logger;
  clock?: Clock;
  random?: () => number;
  id?: string;
}

type DataValueLike = { value: { value: unknown; dataType: number; arrayType: number }; statusCode: { name: string; isGood(): boolean } };

/** Faults of the connection: closed when a session works again. */
const CONNECTION_CODES: readonly ErrorCode[] = [ErrorCodes.OPCUA_UNREACHABLE, ErrorCodes.OPCUA_SESSION_LOST, ErrorCodes.OPCUA_SECURITY];
/** The node's statuses that mean it is gone (never existed, or deleted while subscribed). */
const NODE_GONE = /^BadNodeId(Unknown|Invalid)$/;

/** The longest wait for the certificate folders to be re-read after a refusal. */
const RESCAN_TIMEOUT_MS = 5000;

/**
 * An OPC UA variable read through a subscription (node-opcua), e.g. `ns=1;s=Line1.State ==
 * "Idle"`. Every fault (server unreachable, node id missing or deleted, session or connection
 * lost, security refused, a status other than Good) makes the state unknown (no training), is
 * reported once per code with what was seen, and connection faults are retried with exponential
 * back-off. Each code reported is closed by its own recovery report (ProblemSet): connection
 * codes when a session works again, node and status codes when a Good value comes. A value
 * whose type can never satisfy `when` is reported too, and the window then never opens (the
 * agent gives up a round at once instead of waiting out its deadline). Nothing here throws into
 * the agent.
 */
export class OpcuaTriggerSource implements TriggerSource {
  readonly id: string;
  private readonly spec: OpcuaSpec;
  private readonly pkiDir: string;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly random: () => number;
  private callbacks: SourceCallbacks | null = null;
  private stopped = false;
  private readonly stopSignal = deferred<void>();
  private loopDone: Promise<void> = Promise.resolve();
  private certificateManager: import('node-opcua').OPCUACertificateManager | null = null;
  /** Connection attempts (reset after a working session), for the back-off. */
  private attempts = 0;
  private readonly problems: ProblemSet;
  /** The value's type rules `when` out for good: the window cannot open (see openNotBefore). */
  private neverHolds = false;
  /** The PLC certificate the agent's store did not trust during the current attempt. */
  private refusedServerCertificate: Buffer | null = null;
  private readonly ownCertificateFile: string;

  constructor(o: OpcuaSourceOptions) {
    this.spec = o.spec;
    this.pkiDir = o.pkiDir;
    this.log = o.log.child({ module: 'opcua', endpoint: o.spec.endpoint, nodeId: o.spec.nodeId });
    this.clock = o.clock ?? systemClock;
    this.random = o.random ?? Math.random;
    this.id = o.id ?? `opcua ${o.spec.nodeId}`;
    // buildGate may rename the source after construction (two sources on one node id): read the id when reporting.
    this.problems = new ProblemSet(this.id, (p) => this.callbacks?.problem({ ...p, source: this.id, message: `${this.id}: ${p.message}` }));
    this.ownCertificateFile = join(o.pkiDir, 'own', 'certs', 'client_certificate.pem');
  }

  async start(callbacks: SourceCallbacks): Promise<void> {
    this.callbacks = callbacks;
    this.stopped = false;
    callbacks.update({ state: 'unknown', detail: `connecting to ${this.spec.endpoint}` });
    this.loopDone = this.loop().catch((err: Error) => {
      // A bug in the loop must not leave the gate believing an old state: unknown, for good.
      this.log.error({ err: err.message }, 'OPC UA source stopped after an internal error');
      this.callbacks?.update({ state: 'unknown', detail: `internal error: ${err.message}` });
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.callbacks = null;
    this.stopSignal.resolve();
    await this.loopDone;
    const manager = this.certificateManager;
    this.certificateManager = null;
    await manager?.dispose().catch((err: Error) => this.log.debug({ err: err.message }, 'closing the OPC UA certificate store'));
  }

  /** Unknown (null: the line may go idle any moment), or never (Infinity) while the value's type rules `when` out. */
  openNotBefore(): number | null {
    return this.neverHolds ? Infinity : null;
  }

  private async loop(): Promise<void> {
    const opcua = await loadOpcua(this.log);
    while (!this.stopped) {
      let failure: Failure;
      this.refusedServerCertificate = null;
      try {
        await this.runSession(opcua, () => {
          this.attempts = 0;
          if (this.problems.codes.length) this.log.info({ was: this.problems.codes }, 'OPC UA line state available again');
          this.problems.resolveAll(CONNECTION_CODES, () => `connected again to ${this.spec.endpoint}, the line state is read again`);
        });
        if (this.stopped) return;
        failure = { code: ErrorCodes.OPCUA_SESSION_LOST, message: `OPC UA session to ${this.spec.endpoint} lost` };
      } catch (err) {
        if (this.stopped) return;
        failure = classifyOpcuaFailure(err, {
          endpoint: this.spec.endpoint,
          securityMode: this.spec.securityMode,
          securityPolicy: this.spec.securityPolicy,
          ownCertificateFile: this.ownCertificateFile,
          pkiDir: this.pkiDir,
          refusedServerCertificate: this.refusedServerCertificate,
        });
      }
      // Without a session nothing is known of the value's type either.
      this.neverHolds = false;
      this.callbacks?.update({ state: 'unknown', detail: `line state unknown: ${failure.message}` });
      this.problems.raise(failure.code, failure.message);
      if (failure.code === ErrorCodes.OPCUA_SECURITY) await this.rescanCertificates();
      const delay = backoffDelayMs(this.attempts++, this.spec.retryInitialDelayMs, this.spec.retryMaxDelayMs, this.random);
      this.log.warn({ code: failure.code, retryInMs: delay, attempt: this.attempts }, failure.message);
      await new Promise<void>((resolve) => {
        const t = this.clock.setTimeout(resolve, delay);
        this.stopSignal.promise.then(() => {
          this.clock.clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /**
   * A refused certificate is fixed by a person moving it from rejected/ to trusted/certs/. The
   * certificate manager learns of that through file watchers, which can miss or delay the move
   * (busy machines, network file systems); re-reading the folders before the next try does not.
   */
  private async rescanCertificates(): Promise<void> {
    const manager = this.certificateManager;
    if (!manager) return;
    let timer: unknown = null;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = this.clock.setTimeout(() => resolve('timeout'), RESCAN_TIMEOUT_MS)));
    try {
      const outcome = await Promise.race([manager.reloadCertificates().then(() => 'done' as const), timedOut]);
      if (outcome === 'timeout') throw new FedlineError(ErrorCodes.TIMEOUT, `no answer within ${RESCAN_TIMEOUT_MS} ms`);
    } catch (err) {
      // Start from a fresh certificate manager (it reads the folders when the next client starts).
      this.log.warn({ err: (err as Error).message, pkiDir: this.pkiDir }, 'could not re-read the OPC UA certificate folders; opening them afresh');
      this.certificateManager = null;
      manager.dispose().catch(() => undefined);
    } finally {
      this.clock.clearTimeout(timer);
    }
  }

  private identity(opcua: Opcua): import('node-opcua').UserIdentityInfo {
    const { user, userCertificate } = this.spec;
    if (user) {
      const password = user.password ?? readFileSync(user.passwordFile!, 'utf8').split(/\r?\n/)[0]!;
      return { type: opcua.UserTokenType.UserName, userName: user.username, password };
    }
    if (userCertificate) {
      return {
        type: opcua.UserTokenType.Certificate,
        certificateData: pemToDer(readFileSync(userCertificate.certFile, 'utf8'), userCertificate.certFile),
        privateKey: readFileSync(userCertificate.keyFile, 'utf8'),
      };
    }
    return { type: opcua.UserTokenType.Anonymous };
  }

  /** The client certificate store, created once; it notes the PLC certificate it refuses (named in the alert). */
  private certificateStore(opcua: Opcua): import('node-opcua').OPCUACertificateManager {
    if (this.certificateManager) return this.certificateManager;
    const spec = this.spec;
    const accept = spec.acceptUnknownServerCertificate ?? spec.securityMode === 'None';
    const manager = new opcua.OPCUACertificateManager({ rootFolder: this.pkiDir, automaticallyAcceptUnknownCertificate: accept });
    const verify = manager.verifyCertificate.bind(manager);
    manager.verifyCertificate = async (...args: Parameters<typeof verify>) => {
      const status = await verify(...args);
      const [certificate] = args;
      if (status !== 'Good') this.refusedServerCertificate = Array.isArray(certificate) ? certificate[0]! : certificate;
      return status;
    };
    // A person may move the refused certificate to trusted/certs/ while a retry is being refused
    // (the store's index follows the folders with a delay): node-opcua would then move it back to
    // rejected/ and undo that decision for good. A certificate found in trusted/certs/ stays there.
    const reject = manager.rejectCertificate.bind(manager);
    manager.rejectCertificate = async (chain: Parameters<typeof reject>[0]) => {
      const der = firstCertificate(Array.isArray(chain) ? chain[0]! : chain);
      if (findCertificateFile(join(this.pkiDir, 'trusted', 'certs'), der)) {
        this.log.info({ pkiDir: this.pkiDir }, 'the PLC certificate was moved to trusted/certs/: it stays there');
        return;
      }
      await reject(chain);
    };
    this.certificateManager = manager;
    return manager;
  }

  /** One connection: connect, session, check the node, subscribe; resolves when it is lost (or on stop). */
  private async runSession(opcua: Opcua, onUp: () => void): Promise<void> {
    const spec = this.spec;
    const client = opcua.OPCUAClient.create({
      applicationName: 'fedline-agent',
      endpointMustExist: false,
      securityMode: opcua.MessageSecurityMode[spec.securityMode],
      securityPolicy: opcua.SecurityPolicy[spec.securityPolicy],
      // Our own loop retries with back-off and reports; node-opcua's retries would hide faults.
      connectionStrategy: { maxRetry: 0, initialDelay: 200, maxDelay: 1000 },
      keepSessionAlive: true,
      requestedSessionTimeout: 60_000,
      clientCertificateManager: this.certificateStore(opcua),
    });
    // An 'error' event without a listener would throw and end the process: log it, the loop decides.
    const onError = (err: Error) => this.log.debug({ err: err.message }, 'OPC UA client error');
    const asEmitter = client as unknown as NodeJS.EventEmitter;
    asEmitter.on('error', onError);
    const lost = deferred<void>();
    const onLost = (why: string) => () => {
      this.log.debug({ why }, 'OPC UA connection event');
      lost.resolve();
    };
    client.on('connection_lost', onLost('connection lost'));
    client.on('close', onLost('closed'));
    // The node deleted while subscribed: the monitored item is dead, end the session (the loop retries and reports).
    const nodeGone = deferred<string>();
    let watchdog: unknown = null;
    const kick = () => {
      if (watchdog !== null) this.clock.clearTimeout(watchdog);
      // Keep-alives come every 10 publishing intervals; three missed ones mean the server is gone
      // even when TCP has not noticed (a pulled cable sends no FIN).
      watchdog = this.clock.setTimeout(onLost('no keep-alive'), spec.samplingIntervalMs * 30 + 2000);
    };
    try {
      await withTimeout(client.connect(spec.endpoint), spec.connectTimeoutMs, `connecting to ${spec.endpoint}`);
      const session = await withTimeout<import('node-opcua').ClientSession>(
        client.createSession(this.identity(opcua)),
        spec.connectTimeoutMs,
        'creating the OPC UA session',
      );
      session.on('session_closed', onLost('session closed'));
      const first = (await session.read({ nodeId: spec.nodeId, attributeId: opcua.AttributeIds.Value })) as unknown as DataValueLike;
      if (NODE_GONE.test(first.statusCode.name)) {
        throw new FedlineError(ErrorCodes.OPCUA_NODE_MISSING, `node ${spec.nodeId} does not exist on ${spec.endpoint} (${first.statusCode.name})`);
      }
      const subscription = await session.createSubscription2({
        requestedPublishingInterval: spec.samplingIntervalMs,
        requestedMaxKeepAliveCount: 10,
        requestedLifetimeCount: 60,
        maxNotificationsPerPublish: 10,
        publishingEnabled: true,
        priority: 1,
      });
      subscription.on('terminated', onLost('subscription terminated'));
      subscription.on('keepalive', kick);
      const item = await subscription.monitor(
        { nodeId: spec.nodeId, attributeId: opcua.AttributeIds.Value },
        { samplingInterval: spec.samplingIntervalMs, queueSize: 1, discardOldest: true },
        opcua.TimestampsToReturn.Neither,
      );
      item.on('changed', (dv: unknown) => {
        kick();
        const value = dv as DataValueLike;
        if (NODE_GONE.test(value.statusCode.name)) nodeGone.resolve(value.statusCode.name);
        else this.onValue(opcua, value);
      });
      kick();
      this.onValue(opcua, first);
      this.log.info({ securityMode: spec.securityMode, securityPolicy: spec.securityPolicy }, 'OPC UA subscription to the line state active');
      onUp();
      const gone = await Promise.race([lost.promise.then(() => null), this.stopSignal.promise.then(() => null), nodeGone.promise]);
      if (gone !== null && !this.stopped)
        throw new FedlineError(ErrorCodes.OPCUA_NODE_MISSING, `node ${spec.nodeId} was deleted from ${spec.endpoint} during the subscription (${gone})`);
    } finally {
      if (watchdog !== null) this.clock.clearTimeout(watchdog);
      client.removeAllListeners();
      asEmitter.on('error', onError);
      await withTimeout(client.disconnect(), 3000, 'OPC UA disconnect').catch(() => undefined);
    }
  }

  /** A value of the node (its first read or a notification): the window's state, and the node alerts opened or closed. */
  private onValue(opcua: Opcua, dv: DataValueLike): void {
    if (!this.callbacks) return;
    const { nodeId, endpoint, when } = this.spec;
    this.problems.resolve(ErrorCodes.OPCUA_NODE_MISSING, `node ${nodeId} exists again on ${endpoint}`);
    const status = dv.statusCode.name;
    if (!dv.statusCode.isGood()) {
      this.neverHolds = false;
      this.callbacks.update({ state: 'unknown', detail: `${nodeId}: status ${status}` });
      this.problems.raise(
        ErrorCodes.OPCUA_BAD_STATUS,
        `${nodeId} on ${endpoint} reports status ${status} instead of a value: the line state is unknown, no training until it is Good again`,
      );
      return;
    }
    const raw = dv.value.value;
    const value = toScalar(raw);
    const type = `${opcua.DataType[dv.value.dataType] ?? `DataType ${dv.value.dataType}`}${dv.value.arrayType ? '[]' : ''}`;
    this.problems.resolve(ErrorCodes.OPCUA_BAD_STATUS, `${nodeId} reports a Good value again: ${JSON.stringify(value ?? raw)} (${type})`);
    if (value === null && raw !== null && raw !== undefined)
      return this.neverSatisfied(`${nodeId} = ${shortJson(raw)} (${type}) is not a string, number or boolean`);
    if (value === null) {
      this.callbacks.update({ state: 'unknown', detail: `${nodeId}: value ${JSON.stringify(raw)} is not a string, number or boolean` });
      return;
    }
    if (!conditionCanHold(when, value)) return this.neverSatisfied(`${nodeId} = ${JSON.stringify(value)} (${type})`);
    this.neverHolds = false;
    this.problems.resolve(ErrorCodes.OPCUA_VALUE_TYPE, `${nodeId} is ${type} now, which can satisfy when (${describeCondition(when)})`);
    const holds = conditionHolds(when, value);
    this.callbacks.update({
      state: holds ? 'open' : 'closed',
      detail: `${nodeId} = ${JSON.stringify(value)} (needs ${describeCondition(when)})`,
    });
  }

  /** The value's type can never satisfy `when`: closed for good (until the type changes), and said at once. */
  private neverSatisfied(seen: string): void {
    const needs = describeCondition(this.spec.when);
    this.neverHolds = true;
    this.callbacks?.update({ state: 'closed', detail: `${seen} can never satisfy when (needs ${needs})` });
    this.problems.raise(
      ErrorCodes.OPCUA_VALUE_TYPE,
      `${seen} on ${this.spec.endpoint}: a value of this type can never satisfy when (needs ${needs}): check the trigger's nodeId and when; the training window stays shut`,
    );
  }
}

/** A value for a message, at most 80 characters. */
function shortJson(v: unknown): string {
  const text = JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)) ?? String(v);
  return text.length > 80 ? `${text.slice(0, 80)}...` : text;
}
