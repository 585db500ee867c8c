// Assembles the facts a policy rule sees from what the session and the checks gathered so far.

import type { CheckContext } from '../pipeline/types.js';
import type { Facts } from './facts.js';
import { domainOf } from './facts.js';

export function factsFor(ctx: CheckContext): Facts {
  const { session, tx } = ctx;
  if (!tx) throw new Error('policy facts need a transaction');
  const name = session.account ?? tx.mailFrom.toLowerCase();
  const acct = tx.policy.account(name, tx.reportedPlan);
  return {
    listener: session.listener.name,
    listenerMode: session.listener.mode,
    clientIp: session.remoteAddress,
    authenticated: session.listener.mode !== 'trusted',
    account: { name, domain: domainOf(name), plan: acct.plan, status: tx.accountStatus ?? 'unknown', allowlisted: acct.allowlisted },
    sender: tx.mailFrom,
    recipients: tx.recipients.filter((r) => r.accepted).map((r) => r.address),
    recipient: ctx.recipient,
    senderAligned: tx.senderAligned,
    fromAligned: tx.fromAligned,
    message: tx.message,
    scan: tx.scan,
    limits: tx.limits,
    recipientLimits: ctx.phase === 'rcpt' ? tx.recipientLimits : undefined,
    bulk: tx.bulk,
    baselineRatio: tx.baselineRatio,
  };
}
