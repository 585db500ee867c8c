// Every reason Douane can give for refusing, delaying or ending something, in one place. Each has the
// sentence the client reads (after the SMTP code) and what an operator or user should do about it.
// docs/REASONS.md has one row per entry (a test keeps the two in step); src/smtp/replies.ts maps each
// reason to its SMTP code and enhanced status code.

export interface ReasonInfo {
  /** what the client reads; {placeholders} are filled from the verdict's detail */
  sentence: string;
  /** what to do about it, for the docs and for `douane` CLI output */
  solution: string;
}

export const REASONS = {
  'connection.too_many': {
    sentence: 'Too many connections to this server right now; try again in a few minutes.',
    solution: 'Transient overload. If it persists, raise smtp.max_connections or add an instance.',
  },
  'connection.too_many_from_ip': {
    sentence: 'Too many simultaneous connections from your address ({ip}); close some and try again.',
    solution: 'A client opened more than smtp.max_connections_per_ip sessions at once; usually a misconfigured client or a script.',
  },
  'connection.not_allowed': {
    sentence: 'Your address ({ip}) may not submit mail on this port without authentication.',
    solution: 'Only hosts in the trusted listener\'s allow list may use it. Add the host\'s network to listeners.<name>.allow, or have the client authenticate on the submission port.',
  },
  'session.deadline': {
    sentence: 'Session time limit reached; please reconnect.',
    solution: 'A session lasted longer than smtp.session_deadline. Clients reconnect on their own.',
  },
  'session.idle': {
    sentence: 'No command received for too long; closing the connection.',
    solution: 'The client sent nothing for smtp.idle_timeout while it was its turn: a client left connected, a network that dropped it, or a script holding connections open. Clients reconnect when they have mail to send.',
  },
  'session.shutting_down': {
    sentence: 'This server is restarting; please try again in a moment.',
    solution: 'Douane is draining for a restart. The client retries, possibly through another instance.',
  },
  'auth.tls_required': {
    sentence: 'Start TLS (STARTTLS) before authenticating, so that your password is not sent in clear.',
    solution: 'Configure the mail client to use STARTTLS on port 587, or SSL/TLS on port 465.',
  },
  'auth.required': {
    sentence: 'Authentication required: log in with your mailbox address and password before sending.',
    solution: 'Enable SMTP authentication ("my server requires authentication") in the mail client.',
  },
  'auth.failed': {
    sentence: 'Authentication failed: wrong user name or password.',
    solution: 'The upstream mail server refused the credentials. Check the password in the client.',
  },
  'auth.upstream_unavailable': {
    sentence: 'Authentication is temporarily unavailable; please try again in a few minutes.',
    solution: 'Douane could not reach the upstream MTA to check the credentials. Check upstream.host/port and the MTA.',
  },
  'auth.blocked': {
    sentence: 'Too many failed logins from your address or for this account; try again[ in {retry}].',
    solution: 'Brute-force protection (art. 4.1): failed AUTH attempts over the policy\'s auth limits block the address or account for a while. The block lifts by itself.',
  },
  'auth.too_many_at_once': {
    sentence: 'Too many logins at once from your address or for this account; please try again in a moment.',
    solution: 'Brute-force protection (art. 4.1): attempts still being checked count as failures until they are known not to be, so that parallel connections cannot try more passwords than the policy\'s auth limits allow. Past the limit, the others wait: a client opening more connections at once than failures_per_account (or failures_per_ip) allows gets this for the extra ones, which retry. Nothing is counted or blocked.',
  },
  'auth.limits_unavailable': {
    sentence: 'Logins cannot be checked right now; please try again in a few minutes.',
    solution: 'Redis did not answer within limits.deadline and limits.on_redis_failure is tempfail: the brute-force limits cannot be read, so no login is tried. Check Redis, or switch to insurance.',
  },
  'auth.too_many_failures': {
    sentence: 'Too many failed authentication attempts on this connection.',
    solution: 'The client sent wrong credentials smtp.max_auth_failures times; it must reconnect. Repeated failures are brute force (art. 4.1).',
  },
  'smtp.bare_lf_in_command': {
    sentence: 'Command lines must end with CR LF; a bare LF is not accepted.',
    solution: 'The client does not follow RFC 5321 line endings. Fix the client; this is also how SMTP smuggling attacks start.',
  },
  'smtp.nul_in_command': {
    sentence: 'Command lines must not contain NUL bytes.',
    solution: 'The client sent a NUL byte in a command; a broken or hostile client.',
  },
  'smtp.too_many_errors': {
    sentence: 'Too many unrecognized or unauthenticated commands; closing the connection.',
    solution: 'The client sent commands the server does not know, or too many before authenticating: a broken client, or one probing the server.',
  },
  'smtp.param_not_offered': {
    sentence: 'The parameter {param} is not supported here; send the command without it.',
    solution: 'The client used a MAIL FROM or RCPT TO parameter that Douane does not offer (it would be lost on the way, or the upstream does not offer its extension, as SMTPUTF8 with smtputf8_enable = no). Clients that follow EHLO fall back on their own (an international address written in ASCII, xn--).',
  },
  'smtp.line_too_long': {
    sentence: 'Command line too long; closing the connection.',
    solution: 'A command line exceeded smtp.max_line_length bytes. A broken or hostile client.',
  },
  'message.bare_line_ending': {
    sentence: 'Message refused: it contains a bare CR or LF; lines must end with CR LF (protection against SMTP smuggling).',
    solution: 'The message was not relayed. The sending software must use CR LF line endings (RFC 5321 2.3.8).',
  },
  'message.nul_byte': {
    sentence: 'Message refused: it contains NUL bytes, which SMTP does not allow.',
    solution: 'The message was not relayed. The sending software must encode binary content (base64).',
  },
  'message.too_big': {
    sentence: 'Message too big[: the limit is {limit} bytes].',
    solution: 'Send large files another way, or raise smtp.max_message_size if the upstream accepts more.',
  },
  'message.over_daily_volume': {
    sentence: 'Message refused: it is larger[ ({size} bytes)] than this account may send in a whole day[ ({limit} bytes)].',
    solution: 'The message alone is over the plan\'s bytes_per_day (policies/limits.yaml), so no retry could ever pass: it is refused for good rather than delayed. Send large files another way, or give the account a larger bytes_per_day.',
  },
  'recipients.too_many': {
    sentence: 'Too many recipients for one message[ (limit {limit})]; send the rest in another message.',
    solution: 'The client may send the remaining recipients in a new transaction. The limit is the plan\'s recipients_per_message (policies/limits.yaml), or smtp.max_recipients when that is lower.',
  },
  'recipients.too_many_refused': {
    sentence: 'Too many recipients of this message were refused; closing the connection.',
    solution: 'The client went on giving recipients after smtp.max_refused_recipients of them had been refused in one message (over its limits, unknown to the upstream): a broken client, or one harvesting addresses. Nothing of that message was accepted; the client may reconnect and send it to the recipients that exist.',
  },
  'limits.unavailable': {
    sentence: 'Your message could not be checked against your sending limits right now; please try again later.',
    solution: 'Redis did not answer within limits.deadline and limits.on_redis_failure is tempfail. Check Redis, or switch to insurance.',
  },
  'policy.rule': {
    sentence: 'Message refused by the sending policy of your provider.',
    solution: 'A policy rule refused it; the rule id and contract article follow the reference. See the rule in policies/.',
  },
  'limit.rate': {
    sentence: 'Sending limit reached[ ({limit})]; try again[ in {retry}].',
    solution: 'The account went over a limit of its plan (art. 4.6). It lifts by itself; a plan change or an account override in policies/ raises it.',
  },
  'message.malware': {
    sentence: 'Message refused: it contains malware ({signature}).',
    solution: 'The antivirus found the named signature. The message was kept in quarantine; if it is a false positive the security team can release it.',
  },
  'message.unscannable': {
    sentence: 'Your message could not be checked for viruses right now; it was not accepted, please try again later.',
    solution: 'clamd was unreachable, timed out or gave no clear answer. Check clamd; scanning.fail_open in the policy lets mail through unscanned (tagged) instead.',
  },
  'scan.too_big': {
    sentence: 'Message refused: it is too big to be checked for viruses[ (limit {limit} bytes)].',
    solution: 'The message is over scanning.max_size in the policy (keep it below clamd\'s StreamMaxLength). scanning.over_max_size chooses reject, tempfail or skip.',
  },
  'bulk.campaign': {
    sentence: 'Message refused: the same content went to too many recipients ({recipients}); bulk mailing is not allowed from this account.',
    solution: 'Bulk-send detection (art. 4.6). Newsletters with an agreement go in allowlists.bulk_exempt.',
  },
  'sender.not_owned': {
    sentence: 'Sender address[ {sender}] does not belong to your account.',
    solution: 'The envelope sender is not the account, one of its aliases or (sender.same_domain) its domain. Add the alias to accounts.<account>.aliases if legitimate.',
  },
  'sender.unverifiable': {
    sentence: 'The addresses of your account cannot be checked right now[ ({address})]; your message was not accepted, please try again later.',
    solution: 'The lifecycle API did not answer, so the account\'s aliases are unknown, and the envelope sender or the From: is not the account\'s own address. Rather than refuse what may be a legitimate alias (and count a strike for it), Douane asks the client to retry. Check the lifecycle API.',
  },
  'from.not_owned': {
    sentence: 'Message refused: the From address ({from}) does not belong to your account.',
    solution: 'The From:/Sender: header names an address the account does not own — typical of a stolen account sending phishing (art. 4.1).',
  },
  'from.multiple': {
    sentence: 'Message refused: a message may have only one From address.',
    solution: 'Several From: addresses are a spoofing technique; the sending software must use one.',
  },
  'content.forbidden': {
    sentence: 'Message refused: its content is not allowed by the terms of service.',
    solution: 'A content rule (art. 4.3) matched. The rule id follows the reference.',
  },
  'attachment.forbidden': {
    sentence: 'Message refused: it carries a type of attachment that may not be sent by email (executables, scripts).',
    solution: 'Executable attachments are refused whatever their name (art. 4.6). Share such files another way.',
  },
  'attachment.unreadable_archive': {
    sentence: 'Message refused: it carries an archive in a format whose files cannot be checked (ARJ, LZH, split archives...); send them in a zip instead.',
    solution: 'Douane lists the files of zip, 7z, RAR, tar, cabinet, disk image and TNEF (winmail.dat) attachments to refuse programs inside them (art. 4.6). Other archive formats, which 7-Zip and WinRAR open with a double click, cannot be listed, so they are refused by name, as attachments and inside archives. The sender can send the files in a zip.',
  },
  'mime.ambiguous': {
    sentence: 'Message refused: one of its parts can be read in more than one way[ ({header})], and mail programs read it differently.',
    solution: 'A MIME part with two Content-Type (or transfer encoding, disposition, boundary) headers, base64 with "=" inside a group of four (base64-padding), or a file name given twice, with a NUL in it, or whose Content-Type name and Content-Disposition filename end differently (filename), can show the filter one thing and the recipient another; usually a hostile message, since no mail program writes these. The sender\'s program must write each header and name once, and base64 as RFC 2045 says.',
  },
  'mime.limits': {
    sentence: 'Message refused: its MIME structure is too large or too deeply nested ({mime}).',
    solution: 'The message goes over inspection.max_parts, max_depth or max_header_size, holds an archive with more kinds of file names than can be listed (archive_entries), or more distinct links than are kept (urls, 1000), or is S/MIME signed with content that cannot be read to its end (signed_content); usually a malformed or hostile message.',
  },
  'account.suspended': {
    sentence: 'Sending is suspended for this account[ ({account})][ since {since}][ (incident {incident})][; contact {contact}].',
    solution: 'The account was suspended for abuse (art. 4.6) or locked as compromised (art. 4.1). The security team reinstates it with douane accounts reinstate.',
  },
  'account.locked': {
    sentence: 'This account[ ({account})] is locked and cannot send mail[; contact {contact}].',
    solution: 'The lifecycle API reports the account locked (compromised or abusive, art. 4.1 and 4.6). The provider unlocks it once the holder has secured it.',
  },
  'account.lockout': {
    sentence: 'This account[ ({account})] is locked for a while after too many failed logins; try again later[ or contact {contact}].',
    solution: 'The lifecycle API reports a lockout (Zimbra: zimbraPasswordLockoutMaxFailures reached). It ends by itself after the lockout duration, or when an administrator unlocks it; the holder should check that nobody else is trying their password (art. 4.1).',
  },
  'account.nonpayment': {
    sentence: 'Sending is suspended for this account until an unpaid invoice is settled.',
    solution: 'The lifecycle API reports the account suspended for non-payment (art. 6); it is reactivated after payment.',
  },
  'account.closed': {
    sentence: 'This account is closed and can no longer send mail.',
    solution: 'The lifecycle API reports the account closed (end of contract, art. 8).',
  },
  'upstream.unavailable': {
    sentence: 'The mail server is temporarily unavailable; your message was not accepted, please try again later.',
    solution: 'Douane could not reach or lost the upstream MTA. Nothing was accepted; the client retries. Check the MTA.',
  },
  'upstream.no_answer': {
    sentence: 'The mail server did not confirm your message; please send it again (if it was delivered after all, it may arrive twice).',
    solution: 'The upstream had the whole message but gave no answer for it (its data timeout passed, or the connection was lost after the final dot): it may have queued it. The client sends it again: a duplicate is possible, a loss is not (RFC 1047). Check the MTA.',
  },
  'upstream.session_lost': {
    sentence: 'The connection to the mail server was lost; please reconnect and log in again.',
    solution: 'The upstream closed the authenticated session (often its idle timeout). Douane keeps no password, so the client must reconnect; clients do this on their own.',
  },
  'internal.error': {
    sentence: 'Temporary local problem; your message was not accepted, please try again later.',
    solution: 'A Douane internal error. The log line with the reference has the cause.',
  },
  'internal.check_failed': {
    sentence: 'Your message could not be checked right now; it was not accepted, please try again later.',
    solution: 'A check failed to run (see the log line with the reference). Messages that cannot be checked are tempfailed.',
  },
} as const satisfies Record<string, ReasonInfo>;

export type ReasonCode = keyof typeof REASONS;

/**
 * Fills {placeholders}. A [segment] is shown only when every placeholder in it is known; a placeholder
 * outside one that is unknown is left out (with its parentheses) rather than shown raw to the client.
 */
// A reply line is at most 512 octets (RFC 5321 4.5.3.1.5): a value the client chose (a From address of
// 3000 characters, in CJK under SMTPUTF8) is shortened to this many octets of UTF-8, on a character's
// boundary, leaving room for the sentence, the reference and the rule.
const MAX_VALUE_OCTETS = 120;
const shown = (value: unknown): string => {
  // A line break would end the reply line and start another the client reads as the next reply.
  const text = String(value).replace(/[\p{Cc}\u2028\u2029]+/gu, ' ');
  if (Buffer.byteLength(text) <= MAX_VALUE_OCTETS) return text;
  let out = '';
  let octets = 3;
  for (const char of text) {
    octets += Buffer.byteLength(char);
    if (octets > MAX_VALUE_OCTETS) break;
    out += char;
  }
  return `${out}...`;
};

export function fillSentence(sentence: string, detail: Record<string, unknown> = {}): string {
  return sentence
    .replace(/\[([^\]]*)\]/g, (_whole, inner: string) => ([...inner.matchAll(/\{(\w+)\}/g)].every((m) => detail[m[1]!] !== undefined) ? inner : ''))
    .replace(/\s*\(?\{(\w+)\}\)?/g, (whole, key: string) => {
      if (detail[key] === undefined) return '';
      // A function: a value is text, where "$&" or "$`" (in an address) would otherwise be read as patterns.
      return whole.replace(`{${key}}`, () => shown(detail[key]));
    })
    .replace(/\s+([.;,])/g, '$1');
}
