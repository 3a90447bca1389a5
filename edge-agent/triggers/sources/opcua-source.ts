import { readFileSync } from 'node:fs';
import { deferred, systemClock, withTimeout, type Clock } from '../../../shared/util/async.js';
import { ErrorCodes, FedlineError, isFedlineError, type ErrorCode } from '../../../shared/protocol/errors.js';
import type { Logger } from '../../../shared/util/logger.js';
import type { OpcuaSource as OpcuaSpec } from '../../../shared/config/trigger-config.js';
import { backoffDelayMs } from '../backoff.js';
import { conditionHolds, describeCondition, toScalar } from '../condition.js';
import { loadOpcua, pemToDer, type Opcua } from '../opcua-runtime.js';
import type { SourceCallbacks, TriggerSource } from '../source.js';

export interface OpcuaSourceOptions {
  spec: OpcuaSpec;
  /** The client's certificate store (see OpcuaSpec.pkiDir); the caller resolves the default. */
  pkiDir: string;
  log: Logger;
  clock?: Clock;
  random?: () => number;
  id?: string;
}

interface Failure {
  code: ErrorCode;
  message: string;
}

type DataValueLike = { value: { value: unknown }; statusCode: { name: string; isGood(): boolean } };

/** The longest wait for the certificate folders to be re-read after a refusal. */
const RESCAN_TIMEOUT_MS = 5000;

/** Messages of faults that retrying cannot fix without someone changing a certificate, a login or the security settings. */
const SECURITY_HINT =
  /BadSecurity|BadIdentityToken|BadUserAccessDenied|BadCertificate|BadNoValidCertificates|user token policy|certificate (is )?(untrusted|rejected|invalid)|has been rejected/i;
/** Faults of the network path, checked first ("fail to connect ... to collect server's certificate" is one). */
const UNREACHABLE_HINT =
  /Fail to connect|cannot be established|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|timed out|socket has been disconnected/i;

/**
 * An OPC UA variable read through a subscription (node-opcua), e.g. `ns=1;s=Line1.State ==
 * "Idle"`. Every fault (server unreachable, node id missing, session or connection lost, security
 * refused) makes the state unknown (no training), is reported once per kind with its error code,
 * and is retried with exponential back-off; a recovery is reported too. Nothing here throws into
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

  constructor(o: OpcuaSourceOptions) {
    this.spec = o.spec;
    this.pkiDir = o.pkiDir;
    this.log = o.log.child({ module: 'opcua', endpoint: o.spec.endpoint, nodeId: o.spec.nodeId });
    this.clock = o.clock ?? systemClock;
    this.random = o.random ?? Math.random;
    this.id = o.id ?? `opcua ${o.spec.nodeId}`;
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

  openNotBefore(): null {
    return null;
  }

  private async loop(): Promise<void> {
    const opcua = await loadOpcua(this.log);
    let reported: ErrorCode | null = null;
    while (!this.stopped) {
      let failure: Failure;
      try {
        await this.runSession(opcua, () => {
          this.attempts = 0;
          if (reported) {
            this.log.info({ was: reported }, 'OPC UA line state available again');
            this.callbacks?.problem({ source: this.id, code: reported, message: `${this.id}: connected again to ${this.spec.endpoint}`, recovered: true });
            reported = null;
          }
        });
        if (this.stopped) return;
        failure = { code: ErrorCodes.OPCUA_SESSION_LOST, message: `OPC UA session to ${this.spec.endpoint} lost` };
      } catch (err) {
        if (this.stopped) return;
        failure = this.classify(err);
      }
      this.callbacks?.update({ state: 'unknown', detail: `line state unknown: ${failure.message}` });
      if (reported !== failure.code) {
        reported = failure.code;
        this.callbacks?.problem({ source: this.id, code: failure.code, message: `${this.id}: ${failure.message}`, recovered: false });
      }
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

  private classify(err: unknown): Failure {
    // Our own verdict passes through; anything else (node-opcua's errors, timeouts) is classified by its text.
    if (isFedlineError(err, ErrorCodes.OPCUA_NODE_MISSING)) return { code: err.code, message: err.message };
    const message = err instanceof Error ? err.message : String(err);
    const first = message.split('\n')[0]!.trim();
    if (!UNREACHABLE_HINT.test(message) && SECURITY_HINT.test(message))
      return {
        code: ErrorCodes.OPCUA_SECURITY,
        message: `${this.spec.endpoint} refused the connection or session (security mode ${this.spec.securityMode}, policy ${this.spec.securityPolicy}): ${first}`,
      };
    return { code: ErrorCodes.OPCUA_UNREACHABLE, message: `cannot reach OPC UA server ${this.spec.endpoint}: ${first}` };
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

  /** One connection: connect, session, check the node, subscribe; resolves when it is lost (or on stop). */
  private async runSession(opcua: Opcua, onUp: () => void): Promise<void> {
    const spec = this.spec;
    const accept = spec.acceptUnknownServerCertificate ?? spec.securityMode === 'None';
    this.certificateManager ??= new opcua.OPCUACertificateManager({ rootFolder: this.pkiDir, automaticallyAcceptUnknownCertificate: accept });
    const client = opcua.OPCUAClient.create({
      applicationName: 'fedline-agent',
      endpointMustExist: false,
      securityMode: opcua.MessageSecurityMode[spec.securityMode],
      securityPolicy: opcua.SecurityPolicy[spec.securityPolicy],
      // Our own loop retries with back-off and reports; node-opcua's retries would hide faults.
      connectionStrategy: { maxRetry: 0, initialDelay: 200, maxDelay: 1000 },
      keepSessionAlive: true,
      requestedSessionTimeout: 60_000,
      clientCertificateManager: this.certificateManager,
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
      if (/^BadNodeId(Unknown|Invalid)$/.test(first.statusCode.name)) {
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
        this.onValue(dv as unknown as DataValueLike);
      });
      kick();
      this.onValue(first);
      this.log.info({ securityMode: spec.securityMode, securityPolicy: spec.securityPolicy }, 'OPC UA subscription to the line state active');
      onUp();
      await Promise.race([lost.promise, this.stopSignal.promise]);
    } finally {
      if (watchdog !== null) this.clock.clearTimeout(watchdog);
      client.removeAllListeners();
      asEmitter.on('error', onError);
      await withTimeout(client.disconnect(), 3000, 'OPC UA disconnect').catch(() => undefined);
    }
  }

  private onValue(dv: DataValueLike): void {
    if (!this.callbacks) return;
    if (!dv.statusCode.isGood()) {
      this.callbacks.update({ state: 'unknown', detail: `${this.spec.nodeId}: status ${dv.statusCode.name}` });
      return;
    }
    const value = toScalar(dv.value.value);
    if (value === null) {
      this.callbacks.update({ state: 'unknown', detail: `${this.spec.nodeId}: value ${JSON.stringify(dv.value.value)} is not a string, number or boolean` });
      return;
    }
    const holds = conditionHolds(this.spec.when, value);
    this.callbacks.update({
      state: holds ? 'open' : 'closed',
      detail: `${this.spec.nodeId} = ${JSON.stringify(value)} (needs ${describeCondition(this.spec.when)})`,
    });
  }
}
