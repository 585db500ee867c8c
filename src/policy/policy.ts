// A loaded policy: read-only, versioned by the hash of its files. It resolves an account's plan and
// limits, and evaluates the rules of one phase against the facts of a transaction.

import type { ReasonCode } from '../reasons.js';
import type { Action, RuleRef, Verdict } from '../pipeline/verdict.js';
import { forgetFieldValues, type Condition } from './condition.js';
import type { AccountFacts, Facts } from './facts.js';
import { asciiDomain, comparableAddress, domainOf } from './facts.js';
import type { RulePhase } from './fields.js';
import { LIMIT_NAMES, type Limits, type PolicyDocument } from './schema.js';

export interface Rule {
  id: string;
  description: string;
  article: string;
  phase: RulePhase;
  condition: Condition;
  action: Exclude<Action, 'continue'>;
  reason?: ReasonCode;
  message?: string;
  strike?: { event: string; weight: number };
  mode: 'enforce' | 'monitor';
  /** "policies/rules.yaml:42" */
  source: string;
}

export interface RuleMatch {
  rule: Rule;
  action: Rule['action'];
  /** the rule is in monitor mode: this is what it would have done */
  monitor: boolean;
}

export interface Evaluation {
  verdict: Verdict;
  /** enforced matches, in order (tags and the deciding rule) */
  matched: RuleMatch[];
  /** monitor-mode matches: what those rules would have done */
  would: RuleMatch[];
  tags: string[];
  /** strike events to record (from enforced rules that matched) */
  strikes: { event: string; weight: number; rule: string }[];
  /** evaluation trace, when requested */
  trace?: { rule: string; source: string; mode: string; matched: boolean; steps: string[] }[];
}

export interface AccountPolicy {
  plan: string;
  limits: Limits;
  aliases: string[];
  allowlisted: AccountFacts['allowlisted'];
}

export interface PolicyFile {
  path: string;
  sections: string[];
}

export class Policy {
  readonly rulesByPhase: Readonly<Record<RulePhase, readonly Rule[]>>;
  /** `accounts` by address in its comparable form, however the file wrote it */
  private readonly accountEntries: ReadonlyMap<string, PolicyDocument['accounts'][string]>;
  private readonly domainEntries: ReadonlyMap<string, PolicyDocument['domains'][string]>;

  constructor(
    readonly version: string,
    readonly dir: string,
    readonly files: readonly PolicyFile[],
    readonly doc: Readonly<PolicyDocument>,
    readonly rules: readonly Rule[],
  ) {
    this.rulesByPhase = {
      mail: rules.filter((r) => r.phase === 'mail'),
      rcpt: rules.filter((r) => r.phase === 'rcpt'),
      data: rules.filter((r) => r.phase === 'data'),
    };
    this.accountEntries = new Map(Object.entries(doc.accounts).map(([address, entry]) => [comparableAddress(address), entry]));
    this.domainEntries = new Map(Object.entries(doc.domains).map(([domain, entry]) => [asciiDomain(domain), entry]));
  }

  /** Whether `plan` names one of this policy's plans. */
  definesPlan(plan: string): boolean {
    return Object.prototype.hasOwnProperty.call(this.doc.plans, plan);
  }

  /**
   * The account's plan and limits. The plan: the account's entry, then its domain's, then the one the
   * lifecycle API reports (`reportedPlan`, when the policy defines it), then default_plan; each limit:
   * the account's entry, then its domain's, then the plan's. An account entry that names its plan takes
   * that plan's limits, not its domain's: the account entry wins.
   */
  account(name: string, reportedPlan?: string): AccountPolicy {
    const key = comparableAddress(name);
    const domain = domainOf(key);
    const acct = this.accountEntries.get(key);
    const dom = this.domainEntries.get(domain);
    const reported = reportedPlan !== undefined && this.definesPlan(reportedPlan) ? reportedPlan : undefined;
    const planName = acct?.plan ?? dom?.plan ?? reported ?? this.doc.default_plan;
    const base = this.doc.plans[planName]!;
    const limits = {} as Limits;
    const domainLimits = acct?.plan === undefined ? dom : undefined;
    for (const n of LIMIT_NAMES) limits[n] = acct?.[n] ?? domainLimits?.[n] ?? base[n];
    return {
      plan: planName,
      limits,
      aliases: (acct?.aliases ?? []).map((a) => a.toLowerCase()),
      allowlisted: {
        neverSuspend: matchesAny(key, this.doc.allowlists.never_suspend),
        bulkExempt: matchesAny(key, this.doc.allowlists.bulk_exempt),
        trustedSubmitter: matchesAny(key, this.doc.allowlists.trusted_submitters),
      },
    };
  }

  /** Does `address` belong to the account: its own address, an alias, or (sender.same_domain) its domain? */
  owns(account: string, address: string): boolean {
    const a = comparableAddress(address);
    const acct = comparableAddress(account);
    if (a === acct) return true;
    if (this.doc.sender.same_domain && domainOf(a) === domainOf(acct)) return true;
    return matchesAny(a, this.account(acct).aliases);
  }

  evaluate(phase: RulePhase, facts: Facts, opts: { trace?: boolean } = {}): Evaluation {
    // A facts object evaluated again may have changed since: its field values are computed afresh.
    forgetFieldValues();
    try {
      return this.evaluateRules(phase, facts, opts);
    } finally {
      forgetFieldValues();
    }
  }

  private evaluateRules(phase: RulePhase, facts: Facts, opts: { trace?: boolean }): Evaluation {
    const out: Evaluation = { verdict: { action: 'continue' }, matched: [], would: [], tags: [], strikes: [] };
    if (opts.trace) out.trace = [];
    for (const rule of this.rulesByPhase[phase]) {
      let hit: boolean;
      if (out.trace) {
        const steps: string[] = [];
        hit = rule.condition.explain(facts, steps);
        out.trace.push({ rule: rule.id, source: rule.source, mode: rule.mode, matched: hit, steps });
      } else hit = rule.condition.test(facts);
      if (!hit) continue;
      const match: RuleMatch = { rule, action: rule.action, monitor: rule.mode === 'monitor' };
      if (match.monitor) {
        out.would.push(match);
        continue;
      }
      out.matched.push(match);
      if (rule.strike) out.strikes.push({ ...rule.strike, rule: rule.id });
      if (rule.action === 'tag') {
        out.tags.push(rule.id);
        continue;
      }
      const ref: RuleRef = { id: rule.id, article: rule.article, source: rule.source };
      if (rule.action === 'accept') {
        out.verdict = { action: 'accept', rule: ref };
        return out;
      }
      out.verdict = {
        action: rule.action,
        reason: rule.reason ?? 'policy.rule',
        rule: ref,
        message: rule.message,
        detail: detailFrom(facts, rule),
        evidence: { policy: this.version, fields: rule.condition.fields },
      };
      return out;
    }
    return out;
  }
}

/** Values a reason sentence or rule message may use: {signature}, {limit}, {retry}, {recipients}, … */
function detailFrom(f: Facts, rule: Rule): Record<string, string | number> {
  const d: Record<string, string | number> = { rule: rule.id, article: rule.article, account: f.account.name };
  if (f.scan?.signature) d.signature = f.scan.signature;
  const limits = f.recipientLimits?.exceeded.length ? f.recipientLimits : f.limits;
  if (limits?.exceeded.length) d.limit = limits.exceeded.map((n) => n.replace(/_/g, ' ')).join(', ');
  if (limits?.retryAfter !== undefined) d.retry = humanDuration(limits.retryAfter);
  if (f.bulk) d.recipients = Math.max(f.bulk.accountRecipients, f.bulk.globalRecipients);
  if (f.message?.mimeLimitExceeded) d.mime = f.message.mimeLimitExceeded;
  if (f.message?.mimeAmbiguous) d.header = f.message.mimeAmbiguous;
  if (f.sender) d.sender = f.sender;
  if (f.message?.from.length) d.from = f.message.from.join(', ');
  return d;
}

export function humanDuration(seconds: number): string {
  const s = Math.max(1, Math.ceil(seconds));
  if (s < 90) return `${s} seconds`;
  if (s < 5400) return `${Math.ceil(s / 60)} minutes`;
  if (s < 172_800) return `${Math.ceil(s / 3600)} hours`;
  return `${Math.ceil(s / 86_400)} days`;
}

/** Address patterns: "user@domain", "*@domain" or "@domain". */
export function matchesAny(address: string, patterns: readonly string[]): boolean {
  const a = comparableAddress(address);
  const domain = domainOf(a);
  for (const p of patterns) {
    const pl = comparableAddress(p);
    if (pl === a) return true;
    if ((pl.startsWith('*@') || pl.startsWith('@')) && pl.slice(pl.indexOf('@') + 1) === domain) return true;
  }
  return false;
}
