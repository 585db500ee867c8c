// The one table that turns a verdict (action + reason) into an SMTP reply: code, enhanced status code
// (RFC 3463), the reason's sentence, the incident reference and, for policy rules, the rule id and the
// contract article. Checks never choose codes; they choose reasons.

import { randomInt } from 'node:crypto';
import { REASONS, fillSentence, type ReasonCode } from '../reasons.js';
import type { Phase, Verdict } from '../pipeline/verdict.js';

type Wire = readonly [code: number, enhanced: string];

interface ReplySpec {
  /** reply for a permanent refusal (reject, quarantine) */
  reject?: Wire;
  /** reply for a temporary refusal */
  tempfail?: Wire;
  /** the connection is closed after this reply */
  close?: boolean;
}

const TABLE: Record<ReasonCode, ReplySpec> = {
  'connection.too_many': { tempfail: [421, '4.3.2'], close: true },
  'connection.too_many_from_ip': { tempfail: [421, '4.7.0'], close: true },
  'connection.not_allowed': { reject: [554, '5.7.1'], close: true },
  'session.deadline': { tempfail: [421, '4.4.2'], close: true },
  'session.idle': { tempfail: [421, '4.4.2'], close: true },
  'session.shutting_down': { tempfail: [421, '4.3.2'], close: true },
  'auth.tls_required': { reject: [538, '5.7.11'] },
  'auth.required': { reject: [530, '5.7.0'] },
  'auth.failed': { reject: [535, '5.7.8'] },
  'auth.upstream_unavailable': { tempfail: [454, '4.7.0'] },
  'auth.blocked': { tempfail: [454, '4.7.0'] },
  'auth.too_many_at_once': { tempfail: [454, '4.7.0'] },
  'auth.limits_unavailable': { tempfail: [454, '4.7.0'] },
  'auth.too_many_failures': { tempfail: [421, '4.7.0'], close: true },
  'smtp.bare_lf_in_command': { reject: [500, '5.5.2'] },
  'smtp.nul_in_command': { reject: [500, '5.5.2'] },
  'smtp.too_many_errors': { tempfail: [421, '4.7.0'], close: true },
  'smtp.line_too_long': { tempfail: [421, '4.5.0'], close: true },
  'smtp.param_not_offered': { reject: [555, '5.5.4'] },
  'message.bare_line_ending': { reject: [550, '5.6.0'] },
  'message.nul_byte': { reject: [550, '5.6.0'] },
  'message.too_big': { reject: [552, '5.3.4'] },
  'message.over_daily_volume': { reject: [552, '5.2.3'] },
  'recipients.too_many': { tempfail: [452, '4.5.3'] },
  'recipients.too_many_refused': { tempfail: [421, '4.7.0'], close: true },
  'limits.unavailable': { tempfail: [451, '4.3.0'] },
  'policy.rule': { reject: [550, '5.7.1'], tempfail: [451, '4.7.1'] },
  'limit.rate': { tempfail: [450, '4.7.1'] },
  'message.malware': { reject: [554, '5.7.1'] },
  'message.unscannable': { tempfail: [451, '4.3.0'] },
  'scan.too_big': { reject: [552, '5.3.4'] },
  'bulk.campaign': { reject: [550, '5.7.1'] },
  'sender.not_owned': { reject: [553, '5.7.1'] },
  'sender.unverifiable': { tempfail: [451, '4.4.3'] },
  'from.not_owned': { reject: [550, '5.7.1'] },
  'from.multiple': { reject: [550, '5.7.1'] },
  'content.forbidden': { reject: [550, '5.7.1'] },
  'attachment.forbidden': { reject: [550, '5.7.1'] },
  'attachment.unreadable_archive': { reject: [550, '5.7.1'] },
  'mime.limits': { reject: [554, '5.6.0'] },
  'mime.ambiguous': { reject: [554, '5.6.0'] },
  'account.suspended': { reject: [550, '5.7.1'] },
  'account.locked': { reject: [550, '5.7.1'] },
  'account.lockout': { tempfail: [451, '4.7.1'] },
  'account.nonpayment': { reject: [550, '5.7.1'] },
  'account.closed': { reject: [550, '5.7.1'] },
  'upstream.unavailable': { tempfail: [451, '4.4.1'] },
  'upstream.no_answer': { tempfail: [451, '4.4.1'] },
  'upstream.session_lost': { tempfail: [421, '4.4.1'], close: true },
  'internal.error': { tempfail: [451, '4.3.0'] },
  'internal.check_failed': { tempfail: [451, '4.3.0'] },
};

/** Fallbacks when a reason has no entry for the verdict's action (e.g. a rule that tempfails a 5xx reason). */
const DEFAULT_WIRE: Record<'reject' | 'tempfail', Wire> = {
  reject: [550, '5.7.1'],
  tempfail: [451, '4.7.1'],
};

export interface WireReply {
  code: number;
  enhanced: string;
  /** the text on one line (for logs, and for a reply of one line) */
  text: string;
  close: boolean;
  /** an upstream's multi-line reply, line by line: relayed as several lines */
  lines?: string[];
}

/** Incident references: "D-" and six Crockford base32 characters, e.g. D-7K2M9Q. */
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
export function newReference(): string {
  let out = 'D-';
  for (let i = 0; i < 6; i++) out += ALPHABET[randomInt(32)];
  return out;
}

/** Whether the reply for this reason ends the session (a 421 and its kind). */
export function closesSession(reason: ReasonCode): boolean {
  return TABLE[reason].close === true;
}

/** The action a reason implies on its own: tempfail for 4xx reasons, reject for 5xx ones. */
export function naturalAction(reason: ReasonCode): 'tempfail' | 'reject' {
  return TABLE[reason].reject ? 'reject' : 'tempfail';
}

export function replyFor(verdict: Verdict, _phase: Phase, reference: string): WireReply {
  const reason: ReasonCode = verdict.reason ?? 'internal.error';
  const spec = TABLE[reason];
  const kind = verdict.action === 'tempfail' ? 'tempfail' : 'reject';
  // A reason without a reply of the verdict's class gets the class default: a tempfail is never a 5xx.
  const wire = spec[kind] ?? DEFAULT_WIRE[kind];
  let trace = `Ref ${reference}`;
  if (verdict.rule) trace += `, rule ${verdict.rule.id}${verdict.rule.article ? `, art. ${verdict.rule.article}` : ''}`;
  return {
    code: wire[0],
    enhanced: wire[1],
    text: `${fillSentence(verdict.message ?? REASONS[reason].sentence, verdict.detail)} ${trace}.`,
    close: spec.close === true,
  };
}

/**
 * The reply's text after its code: "5.1.1 text", or for several lines "5.1.1 line\n5.1.1 line", which
 * GatewayConnection.send turns into a multi-line reply with the code and enhanced code on every line.
 */
export function formatWire(reply: WireReply): string {
  if (reply.lines && reply.lines.length > 1) return reply.lines.map((line) => `${reply.enhanced} ${line}`).join('\n');
  return `${reply.enhanced} ${reply.text}`;
}

/** An Error carrying a reply, in the form smtp-server expects from its handler callbacks. */
export class ReplyError extends Error {
  readonly responseCode: number;
  constructor(
    readonly reply: WireReply,
    /** our reason, when the reply is ours rather than the upstream's */
    readonly reason?: ReasonCode,
  ) {
    super(formatWire(reply));
    this.responseCode = reply.code;
  }

  /** the reply with its code, as the log records it */
  get wire(): string {
    return `${this.responseCode} ${this.message}`;
  }
}

/** Replies that smtp-server produces by itself, mapped to our reasons so they read like ours. */
export const LIBRARY_REPLIES: Record<string, { reason: ReasonCode; phase: Phase }> = {
  '538': { reason: 'auth.tls_required', phase: 'auth' },
  '530': { reason: 'auth.required', phase: 'mail' },
  MESSAGE_TOO_BIG: { reason: 'message.too_big', phase: 'mail' },
};

/**
 * Default enhanced codes for the library's protocol replies that have none of their own (syntax errors,
 * bad sequence). Only codes where smtp-server's built-in guess is wrong for a proxy are listed.
 */
export const PROTOCOL_ENHANCED: Record<number, string> = {
  421: '4.4.2',
  451: '4.3.0',
  500: '5.5.2',
  501: '5.5.4',
  502: '5.5.1',
  503: '5.5.1',
  504: '5.5.4',
  530: '5.7.0',
  550: '5.7.1',
  552: '5.3.4',
  554: '5.7.1',
};
