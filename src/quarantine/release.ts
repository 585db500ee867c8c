// Releases a quarantined message: re-submits its original bytes, unchanged, to the upstream's trusted
// port with the original envelope (its parameters too: SMTPUTF8, BODY, delivery receipts), once. The
// entry is claimed first (two people releasing at once do not deliver it twice), marked released after
// the upstream's 250, and the release is audited.

import type { AuditLog } from '../audit/log.js';
import { envelopeParams } from '../upstream/params.js';
import { formatReply } from '../upstream/reply.js';
import { SmtpClient, type UpstreamEndpoint } from '../upstream/smtp-client.js';
import type { QuarantineMeta, QuarantineStore } from './store.js';

export class ReleaseError extends Error {}

export async function releaseMessage(
  store: QuarantineStore,
  id: string,
  opts: { endpoint: UpstreamEndpoint; by: string; audit: AuditLog; force?: boolean },
): Promise<QuarantineMeta> {
  const meta = await store.get(id);
  if (!meta) throw new ReleaseError(`no quarantined message ${id}`);
  if (meta.released && !opts.force) throw new ReleaseError(`${id} was already released on ${meta.released.at} by ${meta.released.by} (--force to send it again)`);
  const unlock = await store.lock(id).catch((err: Error) => {
    throw new ReleaseError(err.message);
  });
  let client: SmtpClient | undefined;
  try {
    const upstream = `${opts.endpoint.host}:${opts.endpoint.port}`;
    try {
      client = await SmtpClient.connect(opts.endpoint);
    } catch (err) {
      throw new ReleaseError(`could not reach the upstream at ${upstream} (${(err as Error).message}); nothing was released, try again later`);
    }
    const offers = (extension: string) => client!.supports(extension);
    const mail = await client.mail(meta.sender, envelopeParams('mail', meta.mailParams ?? {}, offers).params);
    if (mail.code !== 250) throw new ReleaseError(`upstream refused the sender: ${formatReply(mail)}`);
    const refused: string[] = [];
    for (const r of meta.recipients) {
      const reply = await client.rcpt(r, envelopeParams('rcpt', meta.recipientParams?.[r] ?? {}, offers).params);
      if (reply.code !== 250 && reply.code !== 251) refused.push(`${r}: ${formatReply(reply)}`);
    }
    if (refused.length === meta.recipients.length) throw new ReleaseError(`upstream refused every recipient (${refused.join('; ')})`);
    const reply = await client.data(store.open(id));
    if (reply.code !== 250) throw new ReleaseError(`upstream refused the message: ${formatReply(reply)}`);
    const released = { ...meta, released: { at: new Date().toISOString(), by: opts.by, reply: formatReply(reply), ...(refused.length ? { refused } : {}) } };
    await store.update(released);
    await opts.audit.append({ action: 'release', actor: opts.by, account: meta.account, reference: meta.reference, quarantine_id: id, recipients: meta.recipients, ...(refused.length ? { refused } : {}), upstream: formatReply(reply), rule: meta.rule, signature: meta.signature });
    return released;
  } finally {
    await client?.quit();
    await unlock();
  }
}
