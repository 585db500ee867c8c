// Runs the real pipeline on a message without sending it: the checks of every phase, in order, with the
// facts that need live services (scanner, limiters, bulk counters, lifecycle API) taken from `given`.
// Used by `douane policy test`, `explain` and `diff`, so that what they show is what `serve` would do.

import type { Config } from '../config/schema.js';
import { LineEndingWatch } from '../data/line-endings.js';
import { inspectStream } from '../inspect/mime.js';
import { Metrics } from '../metrics.js';
import { PIPELINE, runPhase } from '../pipeline/index.js';
import { settlesMessage } from '../pipeline/checks/policy-rules.js';
import type { CheckDeps, RuleTrace } from '../pipeline/types.js';
import { isRefusal, type Phase, type RuleRef, type Verdict } from '../pipeline/verdict.js';
import type { CheckResult, SessionState, Transaction } from '../session/state.js';
import { formatWire, replyFor } from '../smtp/replies.js';
import { comparableAddress, type BulkFacts, type LimitFacts, type ScanFacts } from './facts.js';
import type { Policy } from './policy.js';
import type { StrikeEvent } from './strikes.js';
import type { LimiterPort } from '../limits/limiter.js';
import type { AccountStatus } from '../lifecycle/types.js';

/** Facts that need live services, supplied by hand. */
export interface Given {
  account_status?: string;
  account_plan?: string;
  scan?: ScanFacts;
  limits?: { exceeded: string[]; retry_after?: number; usage?: Record<string, number> };
  /** recipient limits exceeded, for every recipient */
  recipient_limits?: { exceeded: string[]; retry_after?: number };
  bulk?: { account_recipients: number; global_recipients: number; global_accounts: number; fingerprint?: string; degraded?: boolean };
  baseline_ratio?: number;
}

export interface OfflineInput {
  /** the raw message; LF line endings are turned into CRLF, as a mail client does when it submits */
  message?: Buffer;
  account: string;
  sender?: string;
  recipients: string[];
  listener?: 'starttls' | 'tls' | 'trusted';
  given?: Given;
}

export interface PhaseReport {
  phase: Phase;
  recipient?: string;
  results: CheckResult[];
  rules: RuleTrace[];
  verdict: Verdict;
}

export interface OfflineOutcome {
  /** what would happen to the message: accept (relayed), or the first refusal */
  action: 'accept' | 'tempfail' | 'reject' | 'quarantine';
  phase?: Phase;
  rule?: RuleRef;
  reason?: string;
  /** the reply the client would get for the refusal */
  reply?: string;
  tags: string[];
  would: { rule: string; action: string; phase: string }[];
  strikes: StrikeEvent[];
  /** recipients refused at RCPT while others went on */
  refusedRecipients: { address: string; rule?: string; reply: string }[];
  reports: PhaseReport[];
  policyVersion: string;
}

function toCrlf(raw: Buffer): Buffer {
  return Buffer.from(raw.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
}

function minimalMessage(sender: string, recipients: string[]): Buffer {
  return Buffer.from(`From: ${sender}\r\nTo: ${recipients.join(', ')}\r\nSubject: (no message given)\r\nMessage-ID: <offline@douane>\r\n\r\n(no message given)\r\n`);
}

function limitFacts(g: Given['limits'] | Given['recipient_limits']): LimitFacts | undefined {
  if (!g) return undefined;
  return { exceeded: [...g.exceeded], usage: { ...('usage' in g ? g.usage : {}) }, retryAfter: g.retry_after };
}

export async function evaluateOffline(policy: Policy, config: Readonly<Config>, input: OfflineInput): Promise<OfflineOutcome> {
  const given = input.given ?? {};
  const strikes: StrikeEvent[] = [];
  const deps: CheckDeps = {
    clock: { now: () => Date.now() },
    connectionsFrom: () => 1,
    trustedNetwork: () => true,
    policy: () => policy,
    strikes: { record: async (e) => void strikes.push(e) },
    metrics: new Metrics({ version: 'offline', defaultMetrics: false }),
    limiter: givenLimiter(given),
    bulk: { count: async () => (given.bulk ? bulkFacts(given.bulk) : undefined) },
    accounts: {
      lookup: async () => ({
        state: {},
        lifecycle: given.account_status || given.account_plan ? { status: (given.account_status ?? 'unknown') as AccountStatus, ...(given.account_plan ? { plan: given.account_plan } : {}) } : undefined,
      }),
      known: (address) => address,
    },
  };
  const mode = input.listener ?? 'starttls';
  // The account as the gateway names it (comparableAddress: quotes, case, NFC, IDNA), so that a rule on it
  // decides here as it does live.
  const account = comparableAddress(input.account);
  const sender = input.sender ?? account;
  const session: SessionState = {
    id: 'offline',
    reference: 'D-XXXXXX',
    // Named as in the embedded default and douane.example.yaml, so that a rule on the listener's name
    // (listener: submissions) can be tested.
    listener: { name: mode === 'trusted' ? 'trusted' : mode === 'tls' ? 'submissions' : 'submission', mode },
    remoteAddress: '127.0.0.1',
    startedAt: Date.now(),
    account: mode === 'trusted' ? comparableAddress(sender) : account,
    authFailures: 0,
    transactions: 1,
    counted: true,
  };
  const tx: Transaction = {
    reference: 'D-XXXXXX',
    startedAt: Date.now(),
    mailFrom: sender,
    params: {},
    recipients: [],
    results: [],
    tags: [],
    would: [],
    timings: {},
    done: false,
    policy,
    recipientGrants: [],
  };
  session.tx = tx;
  const outcome: OfflineOutcome = { action: 'accept', tags: tx.tags, would: tx.would, strikes, refusedRecipients: [], reports: [], policyVersion: policy.version };
  // Whom to write to, as the gateway adds it to every refusal.
  const replyTo = (verdict: Verdict, phase: Phase) => replyFor({ ...verdict, detail: { contact: config.enforcement.contact, ...verdict.detail } }, phase, tx.reference);
  const refuse = (phase: Phase, verdict: Verdict) => {
    const reply = replyTo(verdict, phase);
    outcome.action = verdict.action as OfflineOutcome['action'];
    outcome.phase = phase;
    outcome.rule = verdict.rule;
    outcome.reason = verdict.reason;
    outcome.reply = `${reply.code} ${formatWire(reply)}`;
    return outcome;
  };
  const run = async (phase: Phase, recipient?: string): Promise<Verdict> => {
    const rules: RuleTrace[] = [];
    const out = await runPhase(phase, { phase, config, deps, session, tx, recipient, trace: (t) => rules.push(...t) }, PIPELINE[phase]);
    tx.results.push(...out.results);
    tx.tags.push(...out.tags);
    outcome.reports.push({ phase, recipient, results: out.results, rules, verdict: out.verdict });
    // A rule that accepts decides the message too (as the gateway's verdict names it): tests may expect it.
    if (out.verdict.action === 'accept' && out.verdict.rule) {
      outcome.rule = out.verdict.rule;
      outcome.phase = phase;
    }
    return out.verdict;
  };

  const mail = await run('mail');
  if (isRefusal(mail)) return refuse('mail', mail);

  let firstRefusal: { verdict: Verdict } | undefined;
  for (const rcpt of input.recipients) {
    const v = await run('rcpt', rcpt);
    if (isRefusal(v)) {
      const reply = replyTo(v, 'rcpt');
      outcome.refusedRecipients.push({ address: rcpt, rule: v.rule?.id, reply: `${reply.code} ${formatWire(reply)}` });
      firstRefusal ??= { verdict: v };
      tx.recipients.push({ address: rcpt, accepted: false, reply: `${reply.code}` });
    } else tx.recipients.push({ address: rcpt, accepted: true, reply: '250' });
  }
  if (!tx.recipients.some((r) => r.accepted)) {
    return firstRefusal ? refuse('rcpt', firstRefusal.verdict) : outcome;
  }

  const raw = toCrlf(input.message ?? minimalMessage(sender, input.recipients));
  const watch = new LineEndingWatch();
  watch.push(raw);
  tx.lineEndings = watch.end();
  tx.size = raw.length;
  tx.oversize = raw.length > config.smtp.max_message_size;
  const limits = policy.doc.inspection;
  tx.message = await inspectStream([raw], { maxParts: limits.max_parts, maxDepth: limits.max_depth, maxHeaderSize: limits.max_header_size });
  tx.scan = given.scan;
  // As live: a message over scanning.max_size is not scanned, and scanning.over_max_size decides.
  if (given.scan !== undefined || config.clamd !== 'none') tx.scanTooBig = raw.length > policy.doc.scanning.max_size;
  const data = await run('data');
  // The message's fate is known here: the data phase's strikes count unless it would come back.
  if (settlesMessage(data)) strikes.push(...(tx.pendingStrikes ?? []));
  tx.pendingStrikes = undefined;
  if (isRefusal(data)) return refuse('data', data);
  // Delivered to the other recipients: the refused ones are in refusedRecipients.
  return outcome;
}

/** The limiters' answers, from `given` (every limit respected when nothing is given). */
function givenLimiter(given: Given): LimiterPort {
  const none = { exceeded: [] as string[], usage: {} };
  return {
    countMessage: async () => {
      const grant = { consumed: [] };
      const baseline = given.baseline_ratio === undefined ? undefined : { ratio: given.baseline_ratio, current: 0, usual: 0 };
      return { grant, judge: () => ({ facts: limitFacts(given.limits) ?? { ...none }, grant, baseline }) };
    },
    checkRecipient: async (_account, limits, _recipient, acceptedSoFar) => {
      const facts = limitFacts(given.recipient_limits) ?? { exceeded: [], usage: {} };
      // Counted within the message, as the live limiter does: nothing needs to be given for it.
      if (acceptedSoFar >= limits.recipients_per_message && !facts.exceeded.includes('recipients_per_message')) facts.exceeded.push('recipients_per_message');
      facts.usage.recipients_per_message ??= acceptedSoFar + 1;
      return { facts, grant: { consumed: [] } };
    },
    authAttempt: async () => ({ retryAfter: 0, settle: async () => ({ accountBlockedNow: false, failures: 0 }) }),
    refund: async () => undefined,
  };
}

function bulkFacts(g: NonNullable<Given['bulk']>): BulkFacts {
  return { fingerprint: g.fingerprint ?? 'given', accountRecipients: g.account_recipients, globalRecipients: g.global_recipients, globalAccounts: g.global_accounts, ...(g.degraded ? { degraded: true } : {}) };
}
