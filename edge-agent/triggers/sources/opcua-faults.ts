import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, isFedlineError, type ErrorCode } from '../../../shared/protocol/errors.js';

/**
 * What went wrong with an OPC UA connection, in words that say what to do: pure functions of the
 * error text node-opcua gives and of what the agent knows (its certificate store), no I/O but
 * reading the store's rejected/ folder.
 */

export interface Failure {
  code: ErrorCode;
  message: string;
}

export interface FailureContext {
  endpoint: string;
  securityMode: string;
  securityPolicy: string;
  /** The agent's own application certificate: what a PLC that refuses it must be given to trust. */
  ownCertificateFile: string;
  /** The agent's certificate store (rejected/, trusted/certs/). */
  pkiDir: string;
  /** The server certificate the agent's store did not trust during this attempt (DER, maybe a chain), if any. */
  refusedServerCertificate: Buffer | null;
}

/** OPC UA status names that always mean a security verdict (certificate, policy, login), whatever else the text says. */
const SECURITY_STATUS = /\b(BadSecurity\w*|BadCertificate\w*|BadIdentityToken\w*|BadUserAccessDenied|BadNoValidCertificates)\b/;
/** Wording of security refusals without a status name. */
const SECURITY_HINT = /user token policy|certificate (is )?(untrusted|rejected|invalid)|has been rejected/i;
/** Faults of the network path ("fail to connect ... to collect server's certificate" is one). */
const UNREACHABLE_HINT =
  /Fail to connect|cannot be established|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|timed out|socket has been disconnected/i;
/** node-opcua's client refusing the server's certificate (its own text, not the server's). */
const AGENT_REFUSED = /server Certificate verification failed(?: with err (\w+))?/i;
/** The server answered the secured OpenSecureChannel with a refusal (ServiceFault with a status), or closed the connection instead (C servers send an ERR frame). */
const PLC_REFUSED = /rejected by server: (BadSecurityChecksFailed|BadCertificate\w*)|may have been rejected by server/i;

/** The whole message on one line (node-opcua's span several; the first alone is cut off mid-sentence). */
function oneLine(message: string): string {
  const text = message.replace(/\s+/g, ' ').trim();
  return text.length > 600 ? `${text.slice(0, 600)}...` : text;
}

export function classifyOpcuaFailure(err: unknown, ctx: FailureContext): Failure {
  // Our own verdicts pass through; anything else (node-opcua's errors, timeouts) is classified by its text.
  if (isFedlineError(err, ErrorCodes.OPCUA_NODE_MISSING)) return { code: err.code, message: err.message };
  const text = oneLine(err instanceof Error ? err.message : String(err));
  const security = `security mode ${ctx.securityMode}, policy ${ctx.securityPolicy}`;
  const agentRefused = AGENT_REFUSED.exec(text);
  if (agentRefused) {
    return {
      code: ErrorCodes.OPCUA_SECURITY,
      message: `the agent refused the certificate of the PLC at ${ctx.endpoint} (${agentRefused[1] ?? 'not trusted'}, ${security}): ${trustHint(ctx)}`,
    };
  }
  const plcRefused = ctx.securityMode !== 'None' ? PLC_REFUSED.exec(text) : null;
  if (plcRefused) {
    const why = plcRefused[1] ?? 'it closed the connection when the agent opened a secure channel';
    return {
      code: ErrorCodes.OPCUA_SECURITY,
      message:
        `the PLC at ${ctx.endpoint} refused the agent's certificate (${why}; ${security}): register the agent's certificate ` +
        `${ctx.ownCertificateFile} with the PLC as a trusted OPC UA client certificate (node-opcua said: ${text})`,
    };
  }
  if (SECURITY_STATUS.test(text) || (!UNREACHABLE_HINT.test(text) && SECURITY_HINT.test(text)))
    return { code: ErrorCodes.OPCUA_SECURITY, message: `${ctx.endpoint} refused the connection or session (${security}): ${text}` };
  return { code: ErrorCodes.OPCUA_UNREACHABLE, message: `cannot reach OPC UA server ${ctx.endpoint}: ${text}` };
}

/** Where the refused PLC certificate is and where a person moves it to trust it. */
function trustHint(ctx: FailureContext): string {
  const rejectedDir = join(ctx.pkiDir, 'rejected');
  const trustedDir = join(ctx.pkiDir, 'trusted', 'certs');
  const der = ctx.refusedServerCertificate ? firstCertificate(ctx.refusedServerCertificate) : null;
  const file = der ? findCertificateFile(rejectedDir, der) : null;
  if (file) return `if it is the PLC's certificate, move ${join(rejectedDir, file)} to ${trustedDir}/ (the agent tries again on its own)`;
  const thumbprint = der ? ` (SHA-1 thumbprint ${sha1(der)})` : '';
  return `if it is the PLC's certificate${thumbprint}, move it from ${rejectedDir}/ to ${trustedDir}/ (the agent tries again on its own)`;
}

/** The first certificate of a DER chain: one ASN.1 SEQUENCE (tag 0x30, then its length). */
export function firstCertificate(chain: Buffer): Buffer {
  if (chain.length < 2 || chain[0] !== 0x30) return chain;
  const first = chain[1]!;
  if (first < 0x80) return chain.subarray(0, Math.min(chain.length, 2 + first));
  const n = first & 0x7f;
  if (n === 0 || n > 4 || chain.length < 2 + n) return chain;
  let length = 0;
  for (let i = 0; i < n; i++) length = length * 256 + chain[2 + i]!;
  return chain.subarray(0, Math.min(chain.length, 2 + n + length));
}

function sha1(der: Buffer): string {
  return createHash('sha1').update(der).digest('hex');
}

/** The file in `dir` holding certificate `der`: by the thumbprint in its name (node-opcua names them `CN[thumbprint].pem`), else by content. */
export function findCertificateFile(dir: string, der: Buffer): string | null {
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => /\.(pem|der)$/i.test(f));
  } catch {
    return null;
  }
  const thumbprint = sha1(der);
  const named = files.find((f) => f.toLowerCase().includes(`[${thumbprint}]`));
  if (named) return named;
  for (const f of files) {
    try {
      const raw = readFileSync(join(dir, f));
      const m = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/.exec(raw.toString('latin1'));
      const content = m ? Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64') : raw;
      if (content.equals(der)) return f;
    } catch {
      // unreadable: not the one
    }
  }
  return null;
}
