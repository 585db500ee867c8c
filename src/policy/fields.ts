// The catalog of fields a rule condition may name: type, the earliest SMTP phase at which it is known,
// what it means, and how to read it from the facts. `douane policy fields` prints this table.

import { DETECTED_TYPES } from '../inspect/magic.js';
import { AMBIGUITIES, INSPECTION_LIMITS, SINGLE_HEADERS } from '../inspect/mime.js';
import { ACCOUNT_STATUSES } from '../lifecycle/types.js';
import { domainOf, type Facts } from './facts.js';
import type { LimitName } from './schema.js';

export type FieldType = 'string' | 'strings' | 'number' | 'bool';
export type RulePhase = 'mail' | 'rcpt' | 'data';

export const PHASE_ORDER: Record<RulePhase, number> = { mail: 0, rcpt: 1, data: 2 };

export interface FieldSpec {
  type: FieldType;
  phase: RulePhase;
  description: string;
  /** the values are domains, in the form asciiDomain gives: a rule's values are put in that form too */
  domain?: true;
  /** the values are addresses in the form comparableAddress gives (xn-- domain, NFC): a rule's values too */
  address?: true;
  /** every value the field can take: a rule comparing it with anything else is a typo, refused at load */
  values?: readonly string[];
  /** known at its phase only, not after: the recipient being checked exists only while RCPT is */
  only?: true;
  get(f: Facts): string | string[] | number | boolean | undefined;
}

const uniq = (xs: string[]) => [...new Set(xs)];

export const MESSAGE_LIMITS: readonly LimitName[] = ['messages_per_minute', 'messages_per_hour', 'messages_per_day', 'bytes_per_day', 'concurrent_sessions'];
export const RECIPIENT_LIMITS: readonly LimitName[] = ['recipients_per_message', 'recipients_per_hour', 'recipients_per_day', 'recipient_domains_per_hour'];
const SCAN_RESULTS = ['clean', 'infected', 'error', 'skipped'] as const;

export const FIELDS: Record<string, FieldSpec> = {
  listener: { type: 'string', phase: 'mail', description: 'name of the listener the client used', get: (f) => f.listener },
  'listener.mode': { type: 'string', phase: 'mail', description: 'starttls, tls or trusted', values: ['starttls', 'tls', 'trusted'], get: (f) => f.listenerMode },
  'client.ip': { type: 'string', phase: 'mail', description: 'client IP address', get: (f) => f.clientIp },
  authenticated: { type: 'bool', phase: 'mail', description: 'the client authenticated (false on a trusted listener)', get: (f) => f.authenticated },
  account: { type: 'string', phase: 'mail', address: true, description: 'the account: AUTH user, or envelope sender on a trusted listener', get: (f) => f.account.name },
  'account.domain': { type: 'string', phase: 'mail', domain: true, description: "the account's domain", get: (f) => f.account.domain },
  'account.plan': { type: 'string', phase: 'mail', description: "the account's plan (art. 3.1)", get: (f) => f.account.plan },
  'account.status': { type: 'string', phase: 'mail', description: `status from the lifecycle API: ${ACCOUNT_STATUSES.join(', ')}`, values: ACCOUNT_STATUSES, get: (f) => f.account.status },
  'account.never_suspend': { type: 'bool', phase: 'mail', description: 'in allowlists.never_suspend', get: (f) => f.account.allowlisted.neverSuspend },
  'account.bulk_exempt': { type: 'bool', phase: 'mail', description: 'in allowlists.bulk_exempt', get: (f) => f.account.allowlisted.bulkExempt },
  'account.trusted_submitter': { type: 'bool', phase: 'mail', description: 'in allowlists.trusted_submitters', get: (f) => f.account.allowlisted.trustedSubmitter },
  sender: { type: 'string', phase: 'mail', description: 'envelope sender (MAIL FROM); empty for the null sender', get: (f) => f.sender },
  'sender.domain': { type: 'string', phase: 'mail', domain: true, description: 'domain of the envelope sender', get: (f) => domainOf(f.sender) },
  'sender.aligned': { type: 'bool', phase: 'mail', description: 'the envelope sender belongs to the account (address, alias or domain)', get: (f) => f.senderAligned },
  'limits.exceeded': { type: 'strings', phase: 'mail', description: `message limits this message goes over (${MESSAGE_LIMITS.join(', ')})`, values: MESSAGE_LIMITS, get: (f) => f.limits?.exceeded },
  'limits.degraded': { type: 'bool', phase: 'mail', description: 'limits were decided without Redis (in-process insurance)', get: (f) => f.limits?.degraded },
  'baseline.ratio': { type: 'number', phase: 'mail', description: "this hour's messages divided by the account's usual hourly volume", get: (f) => f.baselineRatio },
  recipient: { type: 'string', phase: 'rcpt', only: true, description: 'the recipient being checked (RCPT phase)', get: (f) => f.recipient },
  'recipient.domain': { type: 'string', phase: 'rcpt', only: true, domain: true, description: 'domain of the recipient being checked', get: (f) => (f.recipient === undefined ? undefined : domainOf(f.recipient)) },
  'recipient.limits.exceeded': { type: 'strings', phase: 'rcpt', only: true, description: `recipient limits this recipient goes over (${RECIPIENT_LIMITS.join(', ')})`, values: RECIPIENT_LIMITS, get: (f) => f.recipientLimits?.exceeded },
  recipients: { type: 'strings', phase: 'data', description: 'all accepted recipients', get: (f) => f.recipients },
  'recipients.count': { type: 'number', phase: 'data', description: 'number of accepted recipients', get: (f) => f.recipients.length },
  'recipients.domains': { type: 'strings', phase: 'data', domain: true, description: 'distinct recipient domains', get: (f) => uniq(f.recipients.map(domainOf)) },
  'recipients.domains.count': { type: 'number', phase: 'data', description: 'number of distinct recipient domains', get: (f) => uniq(f.recipients.map(domainOf)).length },
  'message.size': { type: 'number', phase: 'data', description: 'size of the message in bytes', get: (f) => f.message?.size },
  from: { type: 'strings', phase: 'data', description: 'addresses in the From: header', get: (f) => f.message?.from },
  'from.domain': { type: 'strings', phase: 'data', domain: true, description: 'domains of the From: addresses', get: (f) => f.message?.from.map(domainOf) },
  'from.count': { type: 'number', phase: 'data', description: 'number of From: addresses', get: (f) => f.message?.from.length },
  'from.aligned': { type: 'bool', phase: 'data', description: 'every From:/Sender: address belongs to the account (true when there is none: see from.count)', get: (f) => f.fromAligned },
  'sender_header': { type: 'string', phase: 'data', description: 'the address in the Sender: header', get: (f) => f.message?.sender },
  subject: { type: 'string', phase: 'data', description: 'the Subject: header, decoded', get: (f) => f.message?.subject },
  body: { type: 'string', phase: 'data', description: 'the text of the message (text parts; HTML as text), first 256 KB', get: (f) => f.message?.body },
  urls: { type: 'strings', phase: 'data', description: 'URLs found in the text and HTML', get: (f) => f.message?.urls },
  'urls.domains': { type: 'strings', phase: 'data', domain: true, description: 'host names of those URLs', get: (f) => f.message && uniq(f.message.urls.map(hostOf).filter((h): h is string => Boolean(h))) },
  'urls.count': { type: 'number', phase: 'data', description: 'number of URLs', get: (f) => f.message?.urls.length },
  'attachments.count': { type: 'number', phase: 'data', description: 'number of attachments (those inside attached messages included, each attachments.* field likewise)', get: (f) => f.message?.attachments.length },
  'attachments.names': { type: 'strings', phase: 'data', description: 'attachment file names', get: (f) => f.message?.attachments.map((a) => a.name) },
  'attachments.extensions': { type: 'strings', phase: 'data', description: 'attachment name extensions, lower case without the dot', get: (f) => f.message?.attachments.map((a) => a.extension) },
  'attachments.declared_types': { type: 'strings', phase: 'data', description: 'MIME types the message declares for its attachments', get: (f) => f.message?.attachments.map((a) => a.declaredType) },
  'attachments.detected_types': { type: 'strings', phase: 'data', description: `types found from the attachments' content (magic bytes): ${DETECTED_TYPES.join(', ')}`, values: DETECTED_TYPES, get: (f) => f.message?.attachments.map((a) => a.detectedType) },
  'attachments.encrypted': { type: 'bool', phase: 'data', description: 'some attachment is an encrypted archive', get: (f) => f.message?.attachments.some((a) => a.encrypted) },
  'attachments.sha256': { type: 'strings', phase: 'data', description: 'SHA-256 of each attachment\'s content', get: (f) => f.message?.attachments.map((a) => a.sha256 ?? '') },
  'archive.entries': { type: 'strings', phase: 'data', description: 'names of files inside archive attachments (a zip\'s or a disk image\'s listing; the one file of a gzip)', get: (f) => f.message?.attachments.flatMap((a) => a.archiveEntries) },
  'mime.limit_exceeded': { type: 'string', phase: 'data', description: `which inspection limit the message goes over (${INSPECTION_LIMITS.join(', ')}), if any`, values: INSPECTION_LIMITS, get: (f) => f.message?.mimeLimitExceeded },
  'mime.ambiguous': { type: 'string', phase: 'data', description: `a part mail programs read in different ways: a header it may have once, found twice (${SINGLE_HEADERS.join(', ')}), base64-padding (a "=" inside a group of four), or filename (a file name given twice, with a control character, or whose name and filename end differently), if any`, values: AMBIGUITIES, get: (f) => f.message?.mimeAmbiguous },
  'scan.result': { type: 'string', phase: 'data', description: 'clamd verdict: clean, infected, error (fail-open only) or skipped', values: SCAN_RESULTS, get: (f) => f.scan?.result },
  'scan.signature': { type: 'string', phase: 'data', description: 'the signature clamd found', get: (f) => f.scan?.signature },
  'bulk.fingerprint': { type: 'string', phase: 'data', description: "the message content's fingerprint", get: (f) => f.bulk?.fingerprint },
  'bulk.account_recipients': { type: 'number', phase: 'data', description: 'distinct recipients of this content from this account in the bulk window', get: (f) => f.bulk?.accountRecipients },
  'bulk.global_recipients': { type: 'number', phase: 'data', description: 'distinct recipients of this content from all accounts in the bulk window', get: (f) => f.bulk?.globalRecipients },
  'bulk.global_accounts': { type: 'number', phase: 'data', description: 'distinct accounts that sent this content in the bulk window', get: (f) => f.bulk?.globalAccounts },
  'bulk.degraded': { type: 'bool', phase: 'data', description: 'the bulk counts were made without Redis (in-process insurance: this instance\'s view since Redis last answered)', get: (f) => (f.bulk ? f.bulk.degraded === true : undefined) },
};

/**
 * `header.<name>`: every value of that header (names are case-insensitive). A header the message does not
 * have is not there: `exists: false` holds for it, as a reader of the rule means.
 */
export function headerField(name: string): FieldSpec {
  const key = name.toLowerCase();
  return { type: 'strings', phase: 'data', description: `values of the ${name} header (exists: whether the message has it)`, get: (f) => f.message?.headers.get(key) };
}

/** `limits.usage.<limit>`: current use of that limit. */
export function usageField(limit: string): FieldSpec {
  // Recipient limits are counted at each RCPT TO: a rule at MAIL FROM would never see them.
  const recipient = (RECIPIENT_LIMITS as readonly string[]).includes(limit);
  return { type: 'number', phase: recipient ? 'rcpt' : 'mail', ...(recipient ? { only: true as const } : {}), description: `current use of ${limit}`, get: (f) => (recipient ? f.recipientLimits?.usage[limit] : f.limits?.usage[limit]) };
}

export function lookupField(name: string, limitNames: readonly string[]): FieldSpec | undefined {
  if (Object.hasOwn(FIELDS, name)) return FIELDS[name];
  if (name.startsWith('header.') && /^header\.[A-Za-z0-9-]+$/.test(name)) return headerField(name.slice('header.'.length));
  if (name.startsWith('limits.usage.') && limitNames.includes(name.slice('limits.usage.'.length))) return usageField(name.slice('limits.usage.'.length));
  return undefined;
}

function hostOf(url: string): string | undefined {
  try {
    return new URL(url).hostname.toLowerCase();
  } catch {
    return undefined;
  }
}
