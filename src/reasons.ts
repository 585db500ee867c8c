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
    sentence: 'Message too big: the limit is {limit} bytes.',
    solution: 'Send large files another way, or raise smtp.max_message_size if the upstream accepts more.',
  },
  'recipients.too_many': {
    sentence: 'Too many recipients for one message (limit {limit}); send the rest in another message.',
    solution: 'The client may send the remaining recipients in a new transaction. The limit is smtp.max_recipients.',
  },
  'upstream.unavailable': {
    sentence: 'The mail server is temporarily unavailable; your message was not accepted, please try again later.',
    solution: 'Douane could not reach or lost the upstream MTA. Nothing was accepted; the client retries. Check the MTA.',
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

export function reasonSentence(reason: ReasonCode, detail: Record<string, unknown> = {}): string {
  return REASONS[reason].sentence.replace(/\{(\w+)\}/g, (_, key: string) =>
    detail[key] === undefined ? `{${key}}` : String(detail[key]),
  );
}
