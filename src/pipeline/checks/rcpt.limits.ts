// Counts the recipient against the account's recipient limits (per message, per hour, per day, distinct
// domains per hour). Only facts (recipient.limits.exceeded): the policy's rules decide. The counts are
// given back if the recipient or the message is not accepted.

import { throttled } from '../../limits/throttle.js';
import type { Check } from '../types.js';

export const rcptLimits: Check = {
  id: 'rcpt.limits',
  phase: 'rcpt',
  describe: 'fact recipient.limits.exceeded: counts the recipient against the account\'s plan',
  async run({ session, tx, deps, recipient }) {
    if (!tx || !recipient) return { action: 'continue', skip: 'no recipient' };
    const account = session.account ?? tx.mailFrom;
    const limits = throttled(tx.policy.account(account, tx.reportedPlan).limits, tx.throttle);
    const accepted = tx.recipients.filter((r) => r.accepted).length;
    const checked = await deps.limiter.checkRecipient(account, limits, recipient, accepted);
    tx.pendingRecipientGrant = checked.grant;
    tx.recipientLimits = checked.facts;
    if (checked.unavailable) return { action: 'tempfail', reason: 'limits.unavailable', evidence: { degraded: true } };
    return { action: 'continue', evidence: { exceeded: checked.facts.exceeded, usage: checked.facts.usage, ...(checked.facts.degraded ? { degraded: true } : {}) } };
  },
};
