// Releases a quarantined message: re-submits its original bytes, unchanged, to the upstream's trusted
// port with the original envelope (its parameters too: SMTPUTF8, BODY, delivery receipts), once. The
// entry is claimed first and read again under the claim (two people releasing at once do not deliver it
// twice), marked released after the upstream's 250, and the release is audited. When the message went out
// whole and no answer came (a timeout, a dropped connection), the upstream may have queued it: the entry
// is marked in doubt and audited so, and is not sent again without --force. The entry is marked in doubt
// before the message goes out, so that a release killed mid-way, or whose outcome cannot be written,
// leaves it so too. A recipient the upstream defers stops the release: nothing is sent, it is tried later.

import type { AuditLog } from '../audit/log.js';
import { envelopeParams } from '../upstream/params.js';
import { formatReply, type SmtpReply } from '../upstream/reply.js';
import { SmtpClient, type UpstreamEndpoint } from '../upstream/smtp-client.js';
import type { QuarantineMeta, QuarantineStore } from './store.js';

export class ReleaseError extends Error {}

export async function releaseMessage(
  store: QuarantineStore,
  id: string,
  opts: { endpoint: UpstreamEndpoint; by: string; audit: AuditLog; force?: boolean; allowMalware?: boolean },
): Promise<QuarantineMeta> {
  if (!(await store.get(id))) throw new ReleaseError(`no quarantined message ${id}`);
  const unlock = await store.lock(id).catch((err: Error) => {
    throw new ReleaseError(err.message);
  });
  let client: SmtpClient | undefined;
  let sent = false;
  try {
    // Read under the claim: a release that finished just before it took the claim is seen.
    const meta = await store.get(id);
    if (!meta) throw new ReleaseError(`no quarantined message ${id}`);
    // Malware is kept to be looked at, not to be sent: a release delivers it to every recipient. A false
    // positive is released with a flag of its own, which --force (meant for a release in doubt) is not.
    if (meta.signature && !opts.allowMalware) throw new ReleaseError(`${id} holds malware (${meta.signature}): releasing it would deliver it to its recipients. If the scanner was wrong, release it with --allow-malware`);
    if (meta.released && !opts.force) throw new ReleaseError(`${id} was already released on ${meta.released.at} by ${meta.released.by} (--force to send it again)`);
    if (meta.releaseInDoubt && !opts.force) {
      const d = meta.releaseInDoubt;
      throw new ReleaseError(`${id} may already have been delivered: a release on ${d.at} by ${d.by} did not record the upstream's answer (${d.error}). Look for it in the upstream's log before sending it again with --force`);
    }
    const upstream = `${opts.endpoint.host}:${opts.endpoint.port}`;
    // Puts the entry back as it was before the mark; if it cannot, the error says that nothing was
    // delivered and that the mark left behind is wrong.
    const restore = async (cause: unknown) => {
      try {
        await store.update(meta);
      } catch (err) {
        const why = cause instanceof Error ? cause.message : String(cause);
        throw new ReleaseError(`${why}; nothing was delivered, but ${id} could not be put back as it was (${(err as Error).message}): it stays marked in doubt, release it with --force`);
      }
    };
    try {
      client = await SmtpClient.connect(opts.endpoint);
    } catch (err) {
      throw new ReleaseError(`could not reach the upstream at ${upstream} (${(err as Error).message}); nothing was released, try again later`);
    }
    const offers = (extension: string) => client!.supports(extension);
    const refused: string[] = [];
    const deferred: string[] = [];
    let marked = false;
    let reply: SmtpReply;
    try {
      const mail = await client.mail(meta.sender, envelopeParams('mail', meta.mailParams ?? {}, offers).params);
      if (mail.code !== 250) throw new ReleaseError(`upstream refused the sender: ${formatReply(mail)}`);
      for (const r of meta.recipients) {
        const answer = await client.rcpt(r, envelopeParams('rcpt', meta.recipientParams?.[r] ?? {}, offers).params);
        // 251 forwarded, 252 cannot verify but will try: accepted, as in a client's own transaction.
        if (answer.code >= 400 && answer.code < 500) deferred.push(`${r}: ${formatReply(answer)}`);
        else if (answer.code < 200 || answer.code >= 300) refused.push(`${r}: ${formatReply(answer)}`);
      }
      // A recipient the upstream defers (greylisting, a full queue) would be dropped for good with the
      // entry marked released: nothing is sent, and the release is tried again later, whole.
      if (deferred.length) throw new ReleaseError(`upstream deferred ${deferred.join('; ')}; nothing was released, try again later`);
      if (refused.length === meta.recipients.length) throw new ReleaseError(`upstream refused every recipient (${refused.join('; ')})`);
      // In doubt until the upstream's answer is recorded: a release killed from here on (^C, a crash, a
      // reboot), or whose record cannot be written, may have delivered the message, and the entry says so.
      // Marked before the write: one that fails half way (written, not flushed) is put back as well.
      marked = true;
      try {
        await store.update({ ...meta, releaseInDoubt: { at: new Date().toISOString(), by: opts.by, error: 'the release was interrupted before the upstream answer was recorded' } });
      } catch (err) {
        throw new ReleaseError(`could not mark ${id} as being released (${(err as Error).message}); nothing was released`);
      }
      reply = await client.data(store.open(id), undefined, undefined, () => (sent = true));
    } catch (err) {
      // Nothing went out: the entry is as it was.
      if (!sent && marked) await restore(err);
      if (err instanceof ReleaseError) throw err;
      const error = (err as Error).message;
      if (!sent) throw new ReleaseError(`the upstream at ${upstream} failed before the message went out (${error}); nothing was released, try again later`);
      const releaseInDoubt = { at: new Date().toISOString(), by: opts.by, error };
      await store.update({ ...meta, releaseInDoubt }).catch(() => undefined);
      await opts.audit.append({ action: 'release_in_doubt', actor: opts.by, account: meta.account, reference: meta.reference, quarantine_id: id, recipients: meta.recipients, error });
      throw new ReleaseError(`${id} went to the upstream whole, but no answer came (${error}): it may have been delivered. Look for it in the upstream's log before sending it again with --force`);
    }
    if (reply.code !== 250) {
      const refusal = new ReleaseError(`upstream refused the message: ${formatReply(reply)}`);
      await restore(refusal);
      throw refusal;
    }
    // Accepted: from here on a failure (writing the entry, the audit) is no doubt about the delivery.
    const released = { ...meta, released: { at: new Date().toISOString(), by: opts.by, reply: formatReply(reply), ...(refused.length ? { refused } : {}) } };
    delete released.releaseInDoubt;
    const audit = () => opts.audit.append({ action: 'release', actor: opts.by, account: meta.account, reference: meta.reference, quarantine_id: id, recipients: meta.recipients, ...(refused.length ? { refused } : {}), upstream: formatReply(reply), rule: meta.rule, signature: meta.signature });
    try {
      await store.update(released);
    } catch (err) {
      // The entry still says "in doubt", so it is not sent again without --force; the person is told why.
      await audit().catch(() => undefined);
      throw new ReleaseError(`${id} was delivered (${formatReply(reply)}), but that could not be recorded in the entry (${(err as Error).message}): do not release it again`);
    }
    await audit().catch((err: Error) => {
      throw new ReleaseError(`${id} was delivered (${formatReply(reply)}) and marked released, but the audit trail could not be written (${err.message}): record the release by hand`);
    });
    return released;
  } finally {
    await client?.quit();
    await unlock();
  }
}
