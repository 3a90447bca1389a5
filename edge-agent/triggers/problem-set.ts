import type { ErrorCode } from '../../shared/protocol/errors.js';
import type { SourceProblem } from './source.js';

/**
 * The alerts a source has open, one per code: `raise` reports a code once (not at every retry)
 * and `resolve` reports its recovery only while it is open. Every code raised is resolved by its
 * own report: when the fault changes during one outage (session lost, then unreachable), both
 * codes are open and both are closed when the source works again.
 */
export class ProblemSet {
  private readonly open = new Map<ErrorCode, string>();
  private readonly source: string;
  private readonly report: (p: SourceProblem) => void;

  constructor(source: string, report: (p: SourceProblem) => void) {
    this.source = source;
    this.report = report;
  }

  /** Report `code` unless it is already open. Returns whether it was reported. */
  raise(code: ErrorCode, message: string): boolean {
    if (this.open.has(code)) return false;
    this.open.set(code, message);
    this.report({ source: this.source, code, message, recovered: false });
    return true;
  }

  /** Report the recovery of `code` if it is open. */
  resolve(code: ErrorCode, message: string): boolean {
    if (!this.open.delete(code)) return false;
    this.report({ source: this.source, code, message, recovered: true });
    return true;
  }

  /** Resolve each of `codes` that is open, in the order they were raised. */
  resolveAll(codes: readonly ErrorCode[], message: (code: ErrorCode) => string): void {
    for (const code of [...this.open.keys()]) if (codes.includes(code)) this.resolve(code, message(code));
  }

  has(code: ErrorCode): boolean {
    return this.open.has(code);
  }

  /** The open codes, in the order they were raised. */
  get codes(): ErrorCode[] {
    return [...this.open.keys()];
  }
}
