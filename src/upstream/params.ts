// The MAIL FROM and RCPT TO parameters that go upstream, from the client's as it wrote them: each only
// when the upstream offers its extension. The same when a message is relayed and when a quarantined one
// is released, so that a release keeps what the client asked for (SMTPUTF8, BODY, delivery receipts).

/** A command's parameters as the client wrote them: KEY (upper case) to its value, or true for a bare keyword. */
export type WrittenParams = Record<string, string | true>;

/** DSN's parameters (RFC 3461), on MAIL FROM and on RCPT TO. */
const DSN_PARAMS = { mail: ['RET', 'ENVID'], rcpt: ['NOTIFY', 'ORCPT'] } as const;

/**
 * SIZE and BODY when the upstream offers SIZE and 8BITMIME, SMTPUTF8 always (the upstream decides), DSN's
 * as written when it offers DSN. `dsnLeftOut` names the DSN parameters an upstream without DSN could not take.
 */
export function envelopeParams(command: 'mail' | 'rcpt', written: WrittenParams, offers: (extension: string) => boolean): { params: string[]; dsnLeftOut: string[] } {
  const params: string[] = [];
  if (command === 'mail') {
    if (typeof written.SIZE === 'string' && offers('SIZE')) params.push(`SIZE=${written.SIZE}`);
    if (typeof written.BODY === 'string' && offers('8BITMIME')) params.push(`BODY=${written.BODY.toUpperCase()}`);
    if (written.SMTPUTF8 === true) params.push('SMTPUTF8');
  }
  const dsn = DSN_PARAMS[command].filter((key) => typeof written[key] === 'string');
  if (!dsn.length) return { params, dsnLeftOut: [] };
  if (!offers('DSN')) return { params, dsnLeftOut: [...dsn] };
  params.push(...dsn.map((key) => `${key}=${written[key] as string}`));
  return { params, dsnLeftOut: [] };
}
