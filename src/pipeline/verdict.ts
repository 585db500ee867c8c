// What checks return: an abstract verdict, never an SMTP code. src/smtp/replies.ts turns a verdict into
// the wire reply for the phase it was given in.

import type { ReasonCode } from '../reasons.js';

export type Phase = 'connect' | 'auth' | 'mail' | 'rcpt' | 'data';

/** continue: no objection; accept: stop checking, let it through; tag: let it through, marked. */
export type Action = 'continue' | 'accept' | 'tag' | 'tempfail' | 'reject' | 'quarantine';

export interface RuleRef {
  id: string;
  /** contract article the rule rests on, e.g. "4.6" */
  article?: string;
  /** where the rule is written, "policies/rules.yaml:42" */
  source?: string;
}

export interface Verdict {
  action: Action;
  reason?: ReasonCode;
  /** replaces the reason's sentence (a policy rule's own message); same {placeholders} */
  message?: string;
  /** values for the reason's sentence and for the log ({limit}, {ip}, …) */
  detail?: Record<string, string | number>;
  rule?: RuleRef;
  /** facts that justify the verdict, kept in the log line and audit trail */
  evidence?: Record<string, unknown>;
  /** set when the check did not apply (recorded as "skip" with this note) */
  skip?: string;
}

export const CONTINUE: Verdict = Object.freeze({ action: 'continue' });

export function isTerminal(v: Verdict): boolean {
  return v.action === 'accept' || v.action === 'tempfail' || v.action === 'reject' || v.action === 'quarantine';
}

export function isRefusal(v: Verdict): boolean {
  return v.action === 'tempfail' || v.action === 'reject' || v.action === 'quarantine';
}
