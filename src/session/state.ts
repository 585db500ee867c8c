// What Douane knows about one client connection and its current mail transaction. Handlers fill it in;
// checks read it; the transaction's record becomes its single log line.

import type { SmtpClient } from '../upstream/smtp-client.js';
import type { LineEndingFacts } from '../data/line-endings.js';
import type { Spool } from '../data/spool.js';
import type { Action, Phase, RuleRef } from '../pipeline/verdict.js';
import type { ReasonCode } from '../reasons.js';
import type { BulkFacts, LimitFacts, MessageFacts, ScanFacts } from '../policy/facts.js';
import type { Policy } from '../policy/policy.js';
import type { StrikeEvent } from '../policy/strikes.js';
import type { AuthAttempt, Grant } from '../limits/limiter.js';
import type { WrittenParams } from '../upstream/params.js';

export type ListenerMode = 'starttls' | 'tls' | 'trusted';

export interface ListenerInfo {
  name: string;
  mode: ListenerMode;
}

/** One check's outcome, as it appears in the log line, metrics and audit evidence. */
export interface CheckResult {
  check: string;
  phase: Phase;
  result: 'pass' | 'fail' | 'skip' | 'error';
  action: Action;
  reason?: ReasonCode;
  rule?: RuleRef;
  note?: string;
  evidence?: Record<string, unknown>;
  ms: number;
}

export interface RecipientRecord {
  address: string;
  /** the reply the client got for this RCPT */
  reply: string;
  accepted: boolean;
  /** its RCPT TO parameters as written (NOTIFY, ORCPT), kept for a release from quarantine */
  params?: WrittenParams;
}

export interface Transaction {
  reference: string;
  startedAt: number;
  mailFrom: string;
  /** MAIL FROM parameters as the client wrote them (values not xtext-decoded) */
  params: WrittenParams;
  declaredSize?: number;
  recipients: RecipientRecord[];
  /** the accepted recipients in comparable form, to relay and count each once */
  acceptedRecipients?: Set<string>;
  results: CheckResult[];
  tags: string[];
  /** the policy this transaction is evaluated under, fixed at MAIL (a reload does not change it) */
  policy: Policy;
  /** facts gathered by the checks, for the policy rules */
  senderAligned?: boolean;
  fromAligned?: boolean;
  accountStatus?: string;
  /** the plan the lifecycle API reports for the account (art. 3.1): used when the policy defines it */
  reportedPlan?: string;
  /** addresses the lifecycle API says the account may send as */
  aliases?: string[];
  /** the lifecycle API did not answer: an address that is not the account's own may be an alias */
  aliasesUnknown?: boolean;
  /**
   * Facts set to false only for want of the aliases (sender.aligned, from.aligned), and the address in
   * question: a rule that would refuse on them gets a tempfail instead, and no strike.
   */
  unverified?: { fields: Set<string>; address: string };
  /** the strike ladder's throttle: the plan's limits times this factor */
  throttle?: number;
  limits?: LimitFacts;
  /** RCPT phase: limits the recipient being checked goes over */
  recipientLimits?: LimitFacts;
  baselineRatio?: number;
  /** the account's usual hourly volume and this hour's, behind baselineRatio */
  baseline?: { ratio: number; current: number; usual: number };
  /** what the limiters counted for this message and its recipients, given back unless accepted */
  limitGrant?: Grant;
  recipientGrants: Grant[];
  /** RCPT phase: what the recipient being checked counted */
  pendingRecipientGrant?: Grant;
  message?: MessageFacts;
  scan?: ScanFacts;
  /** the message went over scanning.max_size: not scanned */
  scanTooBig?: boolean;
  /** the clamd that gave the verdict */
  scanner?: string;
  bulk?: BulkFacts;
  /** monitor-mode rules that matched: what they would have done */
  would: { rule: string; action: string; phase: string }[];
  /**
   * Strikes of the data phase, recorded once the message's fate is known: a message that is tempfailed for
   * a failure of ours or the upstream's comes back, and would strike the account once per try.
   */
  pendingStrikes?: StrikeEvent[];
  /** quarantine requested by the deciding rule */
  quarantine?: boolean;
  /** where the refused message was kept */
  quarantineId?: string;
  /** filled during DATA */
  size?: number;
  lineEndings?: LineEndingFacts;
  oversize?: boolean;
  spool?: Spool;
  /** the message is on its way to the upstream: only the upstream's answer ends the transaction */
  relaying?: boolean;
  /** the message's last bytes went to the upstream, which may have queued it: its answer must reach the client */
  lastBytesSent?: boolean;
  /** how the transaction ended, for the log */
  outcome?: { action: Action | 'abandoned'; reason?: ReasonCode; rule?: RuleRef; reply?: string; note?: string };
  /** performance.now() when the client's final dot came: the data phase's answer is timed from there */
  receivedAt?: number;
  timings: Partial<Record<'mail' | 'rcpt' | 'data' | 'scan' | 'second_look' | 'checks' | 'relay' | 'total', number>>;
  done: boolean;
}

export interface SessionState {
  id: string;
  reference: string;
  listener: ListenerInfo;
  remoteAddress: string;
  startedAt: number;
  /** the authenticated user; on the trusted listener, set from the envelope sender of each transaction */
  account?: string;
  authFailures: number;
  /** the login attempt under way, counted by the brute-force check until the upstream's answer settles it */
  authAttempt?: AuthAttempt;
  upstream?: SmtpClient;
  tx?: Transaction;
  transactions: number;
  /** the upstream's success text for the MAIL/RCPT being answered */
  pendingSuccessText?: string;
  /** counted against the per-IP cap */
  counted: boolean;
  /** set when the session was refused at connect */
  refused?: ReasonCode;
  /** set when Douane ended the session with a closing reply (421): the session deadline, too many errors… */
  endedBy?: ReasonCode;
  /** the client's connection has closed (a DATA handler may still be relaying its message) */
  closed?: boolean;
  /** an authenticated session registered with the concurrent-sessions limit */
  sessionCounted?: boolean;
  /** when its registration lapses (a process that died cannot close it) */
  sessionExpiresAt?: number;
}
