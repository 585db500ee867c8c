// The policy format: every section the security team can write in policies/*.yaml, its keys and types.
// policies/README.md explains each with examples; this file is what the loader checks them against.

import { REASONS } from '../reasons.js';
import { closesSession } from '../smtp/replies.js';
import {
  bool,
  bytes,
  duration,
  int,
  list,
  num,
  obj,
  oneOf,
  optional,
  record,
  refine,
  required,
  section,
  str,
  withDefault,
  type Issue,
  type Schema,
} from '../validate/schema.js';
import { conditionSchema } from './condition.js';
import { lookupField } from './fields.js';

/** Every per-account limit, in the order they are documented. */
export const LIMIT_NAMES = [
  'messages_per_minute',
  'messages_per_hour',
  'messages_per_day',
  'recipients_per_message',
  'recipients_per_hour',
  'recipients_per_day',
  'recipient_domains_per_hour',
  'bytes_per_day',
  'concurrent_sessions',
] as const;
export type LimitName = (typeof LIMIT_NAMES)[number];
export type Limits = Record<LimitName, number>;

const limitSchema = (name: LimitName) => (name === 'bytes_per_day' ? bytes({ min: 1 }) : int({ min: 1 }));

function limitsShape(requiredAll: boolean) {
  return Object.fromEntries(LIMIT_NAMES.map((n) => [n, requiredAll ? required(limitSchema(n)) : optional(limitSchema(n))])) as Record<
    LimitName,
    ReturnType<typeof required<number>>
  >;
}

// Not "*@domain": as an account's key it would match no account (domains: names a whole domain).
const ADDRESS = /^(?!\*@)[^\s@]+@[^\s@*]+$/;
/** An address, "*@domain" or "@domain" (every address of the domain). */
// No "*" in a domain: matching compares domains whole, so "*@*.example.com" would protect nobody.
const addressPattern = str({ pattern: /^(\*?@[^\s@*]+|[^\s@*]+@[^\s@*]+)$/, expected: 'an address, or *@domain for a whole domain (no wildcard in the domain: name each one)' });

/** What a rule's message may name: the values detailFrom (policy.ts) and the gateway give a refusal. */
export const MESSAGE_PLACEHOLDERS = ['rule', 'article', 'account', 'signature', 'limit', 'retry', 'recipients', 'mime', 'header', 'sender', 'from', 'contact'] as const;

/**
 * A rule's message: one line as the client reads it. A YAML block (">", "|") or a wrapped line is joined
 * with single spaces (a line break would end the reply there); a control character or a placeholder
 * that is not one of MESSAGE_PLACEHOLDERS (a typo would vanish from the reply) is refused.
 */
const ruleMessage: Schema<string> = {
  expected: 'a sentence for the client',
  parse(value, path, issues) {
    const text = str().parse(value, path, issues);
    if (text === undefined) return undefined;
    const line = text.replace(/[\t\n\r ]+/g, ' ').trim();
    // eslint-disable-next-line no-control-regex
    if (/[\x00-\x1f\x7f]/.test(line)) {
      issues.push({ path, message: 'holds a control character, which has no place in an SMTP reply' });
      return undefined;
    }
    const unknown = [...line.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!).filter((name) => !(MESSAGE_PLACEHOLDERS as readonly string[]).includes(name));
    if (unknown.length) {
      issues.push({ path, message: `names ${unknown.map((n) => `{${n}}`).join(', ')}, which is not a value a refusal has; it may use ${MESSAGE_PLACEHOLDERS.map((n) => `{${n}}`).join(', ')}` });
      return undefined;
    }
    return line;
  },
};

const plan = obj({ description: optional(str()), ...limitsShape(true) });

const accountOverride = obj({
  plan: optional(str()),
  /** other addresses (or "@domain") this account may send as */
  aliases: optional(list(addressPattern)),
  ...limitsShape(false),
});

const domainOverride = obj({ plan: optional(str()), ...limitsShape(false) });

const window = obj({
  limit: required(int({ min: 1 })),
  window: required(duration({ min: 1000 })),
  block: required(duration({ min: 1000 })),
});

export const ACTIONS = ['accept', 'tag', 'tempfail', 'reject', 'quarantine'] as const;
export const LADDER_ACTIONS = ['notify', 'throttle', 'suspend_sending', 'suspend_account'] as const;

const REASON_NAMES = Object.keys(REASONS);

/**
 * The reasons a rule may give: those of what a message or an account did. Douane's own (a connection,
 * the session, a login, the protocol, the upstream, an internal fault) would tell the client something
 * untrue, and those whose reply closes the session would end it for one recipient's refusal.
 */
const RULE_REASONS = REASON_NAMES.filter((r) => !/^(connection|session|auth|smtp|upstream|internal)\./.test(r) && !closesSession(r as keyof typeof REASONS));

const reasonSchema: Schema<keyof typeof REASONS> = {
  expected: 'a reason code',
  parse(value, path, issues) {
    if (typeof value === 'string' && RULE_REASONS.includes(value)) return value as keyof typeof REASONS;
    const why = typeof value === 'string' && Object.hasOwn(REASONS, value) ? `${JSON.stringify(value)} is Douane's own, not a rule's` : `got ${JSON.stringify(value)}`;
    issues.push({ path, message: `must be a reason code a rule may give (docs/REASONS.md): ${RULE_REASONS.join(', ')} (${why})` });
    return undefined;
  },
};

const strikeRef = {
  expected: 'an event name, or { event, weight }',
  parse(value: unknown, path: (string | number)[], issues: Issue[]) {
    if (typeof value === 'string') return { event: value, weight: undefined as number | undefined };
    return obj({ event: required(str()), weight: optional(num({ min: 0, exclusiveMin: true })) }).parse(value, path, issues);
  },
};

function ruleSchema(limitNames: readonly string[]) {
  return refine(
    obj({
      id: required(str({ pattern: /^[a-z0-9][a-z0-9._-]*$/, expected: 'an id of lower-case letters, digits, ".", "_" or "-"' })),
      description: required(str()),
      article: required(str({ pattern: /^\d+(\.\d+)*$/, expected: 'a contract article such as 4.6' })),
      phase: optional(oneOf('mail', 'rcpt', 'data')),
      when: required(conditionSchema(limitNames)),
      action: required(oneOf(...ACTIONS)),
      reason: optional(reasonSchema),
      message: optional(ruleMessage),
      strike: optional(strikeRef),
      mode: withDefault(oneOf('enforce', 'monitor'), 'enforce'),
    }),
    (r, path): Issue[] => {
      const issues: Issue[] = [];
      const refusal = r.action === 'tempfail' || r.action === 'reject' || r.action === 'quarantine';
      if (!refusal && r.reason) issues.push({ path: [...path, 'reason'], atKey: true, message: `only applies to tempfail, reject and quarantine (this rule's action is ${r.action})` });
      if (!refusal && r.message) issues.push({ path: [...path, 'message'], atKey: true, message: `only applies to tempfail, reject and quarantine (this rule's action is ${r.action})` });
      const order = { mail: 0, rcpt: 1, data: 2 } as const;
      if (r.phase && order[r.phase] < order[r.when.phase]) {
        issues.push({ path: [...path, 'phase'], message: `is too early: the condition uses ${r.when.fields.join(', ')}, known only at ${r.when.phase}` });
      }
      // The recipient being checked exists only while RCPT is: a rule run later would never see it (or, under
      // not:, always see it missing).
      const runsAt = r.phase ?? r.when.phase;
      // Before DATA there is no message to keep: the client would be refused and nothing kept as evidence.
      if (r.action === 'quarantine' && runsAt !== 'data') {
        issues.push({ path: [...path, 'action'], message: `is quarantine, but the rule runs at ${runsAt}, before there is a message to keep: use reject, or add phase: data` });
      }
      const onlyAtRcpt = r.when.fields.filter((name) => lookupField(name, limitNames)?.only);
      if (onlyAtRcpt.length && runsAt !== 'rcpt') {
        const later = r.when.fields.filter((name) => lookupField(name, limitNames)?.phase === 'data');
        const known = `uses ${onlyAtRcpt.join(', ')}, known only while each recipient is checked (rcpt)`;
        issues.push({
          path: [...path, r.phase ? 'phase' : 'when'],
          atKey: true,
          message: r.phase
            ? `is ${r.phase}, but the condition ${known}: the rule would never see it`
            : `${known}, with ${later.join(', ')}, known only at data: the rule would never see it; make it two rules, one at rcpt and one at data (where recipients and recipients.domains hold every recipient)`,
        });
      }
      return issues;
    },
  );
}

export function policySchema(limitNames: readonly string[] = LIMIT_NAMES) {
  return obj({
    plans: required(refine(record(plan, { key: /^[a-z][a-z0-9_-]*$/, keyExpected: 'lower-case letters, digits, "_" or "-"' }), (p, path) => (Object.keys(p).length ? [] : [{ path, message: 'must define at least one plan' }]))),
    default_plan: required(str()),
    accounts: withDefault(record(accountOverride, { key: ADDRESS, keyExpected: 'a full address (for a whole domain, use domains:)' }), {}),
    domains: withDefault(record(domainOverride, { key: /^[a-z0-9.-]+\.[a-z0-9-]+$/i, keyExpected: 'a domain name' }), {}),
    allowlists: section(
      obj({
        never_suspend: withDefault(list(addressPattern), []),
        bulk_exempt: withDefault(list(addressPattern), []),
        trusted_submitters: withDefault(list(addressPattern), []),
      }),
    ),
    auth: section(
      obj({
        failures_per_ip: withDefault(window, { limit: 20, window: 900_000, block: 900_000 }),
        failures_per_account: withDefault(window, { limit: 10, window: 900_000, block: 900_000 }),
        strike: optional(str()),
      }),
    ),
    sender: section(
      obj({
        /** any address of the account's own domain counts as the account's */
        same_domain: withDefault(bool(), false),
      }),
    ),
    bulk: section(
      obj({
        window: withDefault(duration({ min: 60_000 }), 86_400_000),
        /** messages with less text than this are fingerprinted on attachments only */
        min_text_length: withDefault(int({ min: 0 }), 80),
      }),
    ),
    baseline: section(
      obj({
        /** hours of history that make the account's usual hourly volume */
        history: withDefault(int({ min: 2, max: 24 * 14 }), 168),
        /** a baseline needs at least this many messages in the history to count */
        min_messages: withDefault(int({ min: 1 }), 20),
      }),
    ),
    scanning: section(
      obj({
        fail_open: withDefault(bool(), false),
        max_size: withDefault(bytes({ min: 1024 }), 26_214_400),
        over_max_size: withDefault(oneOf('skip', 'tempfail', 'reject'), 'reject'),
      }),
    ),
    inspection: section(
      obj({
        max_parts: withDefault(int({ min: 1 }), 500),
        max_depth: withDefault(int({ min: 1 }), 20),
        max_header_size: withDefault(bytes({ min: 1024 }), 262_144),
      }),
    ),
    rules: withDefault(list(ruleSchema(limitNames)), []),
    strikes: required(
      obj({
        window: required(duration({ min: 60_000 })),
        events: required(
          record(
            obj({
              weight: required(num({ min: 0, exclusiveMin: true })),
              /** at most one event of this kind per account in this time (a client retrying while over its limit) */
              cooldown: optional(duration({ min: 1000 })),
              description: optional(str()),
            }),
            { key: /^[a-z][a-z0-9_]*$/, keyExpected: 'lower-case letters, digits and "_"' },
          ),
        ),
        ladder: required(
          list(
            obj({
              at: required(num({ min: 0, exclusiveMin: true })),
              action: required(oneOf(...LADDER_ACTIONS)),
              for: optional(duration({ min: 60_000 })),
              factor: optional(num({ min: 0, max: 1 })),
              description: optional(str()),
            }),
            { min: 1 },
          ),
        ),
      }),
    ),
  });
}

type Parsed<S> = S extends { parse(...args: never[]): infer T | undefined } ? NonNullable<T> : never;
export type PolicyDocument = Parsed<ReturnType<typeof policySchema>>;
export type RuleDocument = PolicyDocument['rules'][number];

/** The sections a policy file may hold at its top level. */
export const SECTIONS = Object.keys(policySchema().fields!);
