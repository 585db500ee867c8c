// The MAIL FROM and RCPT TO parameters that go upstream, from the client's as it wrote them: each only
// when the upstream offers its extension. The same when a message is relayed and when a quarantined one
// is released, so that a release keeps what the client asked for (SMTPUTF8, BODY, delivery receipts).

/** A command's parameters as the client wrote them: KEY (upper case) to its value, or true for a bare keyword. */
export type WrittenParams = Record<string, string | true>;

/** DSN's parameters (RFC 3461), on MAIL FROM and on RCPT TO. */
const DSN_PARAMS = { mail: ['RET', 'ENVID'], rcpt: ['NOTIFY', 'ORCPT'] } as const;

/**
 * SIZE and BODY when the upstream offers SIZE and 8BITMIME, SMTPUTF8 (refused before, unless offered: paramNotTaken), DSN's
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

/**
 * The parameters Douane takes, by command: SIZE, BODY, SMTPUTF8 and DSN's are relayed (envelopeParams);
 * AUTH= (RFC 4954) names who submitted for an MTA that trusts its client, which says nothing upstream.
 */
const TAKEN = { mail: ['SIZE', 'BODY', 'SMTPUTF8', 'AUTH', ...DSN_PARAMS.mail], rcpt: [...DSN_PARAMS.rcpt] } as const;

/**
 * The first parameter the client wrote that would not reach the upstream for what it asks: one Douane
 * does not know (REQUIRETLS, MT-PRIORITY, …: its request would be lost without a word), or SMTPUTF8 while
 * the upstream does not offer it. Such a command is refused (555), as the MTA itself would.
 */
export function paramNotTaken(command: 'mail' | 'rcpt', written: WrittenParams, offers: (extension: string) => boolean): string | undefined {
  for (const key of Object.keys(written)) {
    if (!(TAKEN[command] as readonly string[]).includes(key)) return key;
    if (key === 'SMTPUTF8' && !offers('SMTPUTF8')) return key;
  }
  return undefined;
}
