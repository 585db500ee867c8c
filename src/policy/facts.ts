// What a policy rule can look at: the facts gathered about a transaction by the checks that ran before
// the rules. Each capability fills in its part (envelope at MAIL/RCPT, the message's content at DATA, the
// scanner, the limiters, the bulk detector, the lifecycle API); a part that is absent was not computed
// (e.g. `douane policy explain` has no scanner), and conditions on it do not match.

import { domainToASCII } from 'node:url';

export interface AttachmentFacts {
  /** file name as declared in the message (may be empty) */
  name: string;
  /** extension of the name, lower case, without the dot */
  extension: string;
  /** the MIME type the message declares */
  declaredType: string;
  /** the type found from the content's first bytes (magic), or "unknown" */
  detectedType: string;
  size: number;
  sha256?: string;
  /** an encrypted archive (its content could not be inspected) */
  encrypted: boolean;
  /** names of the files inside, for archives where listing them is cheap */
  archiveEntries: string[];
}

export interface MessageFacts {
  size: number;
  /** header names lower-cased to their values, in order */
  headers: Map<string, string[]>;
  /** addresses in From: (usually one) */
  from: string[];
  /** the address in Sender:, when present */
  sender?: string;
  subject: string;
  /** text of the message (text parts, HTML converted), bounded for matching */
  body: string;
  /** the body as a mail program shows it, when less: of each multipart/alternative, the last alternative's text */
  shownBody?: string;
  urls: string[];
  attachments: AttachmentFacts[];
  /** MIME structure beyond the configured limits (parts, depth, header size) */
  mimeLimitExceeded?: string;
  /** a header a part may have once, found twice in one part */
  mimeAmbiguous?: string;
}

export interface ScanFacts {
  result: 'clean' | 'infected' | 'error' | 'skipped';
  signature?: string;
  detail?: string;
}

export interface LimitFacts {
  /** message-level limits this message goes over (messages_per_hour, bytes_per_day, …) */
  exceeded: string[];
  /** current use of each limit after this message, by limit name */
  usage: Record<string, number>;
  /** seconds until the tightest exceeded limit has room again */
  retryAfter?: number;
  /** the limiter decided without Redis (insurance) */
  degraded?: boolean;
}

export interface BulkFacts {
  fingerprint: string;
  /** distinct recipients this account sent this content to, in the window */
  accountRecipients: number;
  /** distinct recipients all accounts sent this content to, in the window */
  globalRecipients: number;
  /** distinct accounts that sent this content, in the window */
  globalAccounts: number;
  /** Redis failed: counted on this instance only (limits.on_redis_failure: insurance) */
  degraded?: boolean;
}

export interface AccountFacts {
  name: string;
  domain: string;
  plan: string;
  /** active, locked, suspended, closed, … (lifecycle API), or "unknown" */
  status: string;
  allowlisted: { neverSuspend: boolean; bulkExempt: boolean; trustedSubmitter: boolean };
}

export interface Facts {
  listener: string;
  /** starttls, tls or trusted */
  listenerMode: string;
  clientIp: string;
  authenticated: boolean;
  account: AccountFacts;
  /** envelope sender (MAIL FROM), "" for the null sender */
  sender: string;
  /** recipients accepted so far (all of them at DATA) */
  recipients: string[];
  /** RCPT phase: the recipient being checked */
  recipient?: string;
  /** the envelope sender belongs to the account (its address, aliases or domain) */
  senderAligned?: boolean;
  /** every From:/Sender: address belongs to the account */
  fromAligned?: boolean;
  message?: MessageFacts;
  scan?: ScanFacts;
  limits?: LimitFacts;
  /** RCPT phase: recipient-level limits this recipient goes over */
  recipientLimits?: LimitFacts;
  bulk?: BulkFacts;
  /** this hour's volume divided by the account's usual hourly volume */
  baselineRatio?: number;
}

/** The domain of an address in its one comparable form (see asciiDomain). */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at >= 0 ? asciiDomain(address.slice(at + 1)) : '';
}

/**
 * An address in its one comparable form: lower case, the domain as asciiDomain gives it, a quoted local
 * part without its quotes when it needs none ("joe"@x and "j\oe"@x are joe@x to an MTA too), and an
 * international local part in Unicode's composed form (NFC, as RFC 6532 asks): "josé" typed as "e" and a
 * combining accent is the same account, with the same limits and the same suspension.
 */
export function comparableAddress(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? address.normalize('NFC').toLowerCase() : `${comparableLocal(address.slice(0, at))}@${asciiDomain(address.slice(at + 1))}`;
}

const DOT_ATOM = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\uffff-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\uffff-]+)*$/;

function comparableLocal(written: string): string {
  return plainLocal(written).toLowerCase();
}

/** A local part without quotes it does not need (in NFC, unless `asWritten`); its case is kept. */
function plainLocal(written: string, asWritten = false): string {
  const local = asWritten ? written : written.normalize('NFC');
  if (local.length < 2 || !local.startsWith('"') || !local.endsWith('"')) return local;
  const content = local.slice(1, -1).replace(/\\(.)/g, '$1');
  // Quoted because it must be (a space, a second @…): kept quoted, with only the escapes it needs.
  return DOT_ATOM.test(content) ? content : `"${content.replace(/["\\]/g, '\\$&')}"`;
}

/**
 * One mailbox however its domain is written, for recipients: as comparableAddress, but a local part's case
 * and Unicode form are kept. RFC 5321 (2.4) leaves it to the receiving host, and John.Smith and john.smith
 * may be two people there, as may "josé" written with one character or two (hosts compare the bytes):
 * merged, one would get a 250 and nothing.
 */
export function mailboxKey(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? address : `${plainLocal(address.slice(0, at), true)}@${asciiDomain(address.slice(at + 1))}`;
}

/**
 * A domain in lower case, and an international one in its IDNA form (xn--…), the form URL host names
 * already take: "bücher.example" and "xn--bcher-kva.example" are one domain whichever way a client, a
 * message header or a policy file wrote it. A name that is not a valid domain is only lower-cased.
 */
export function asciiDomain(domain: string): string {
  const d = domain.toLowerCase();
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(d) ? d : domainToASCII(d) || d;
}
