// Counts the message against the account's message limits (per minute, hour, day), checks the day's
// bytes and the open sessions, and measures the account against its usual hourly volume. Only facts
// (limits.exceeded, baseline.ratio): the policy's rules decide. The counts are given back unless the
// upstream accepts the message.

import { throttled } from '../../limits/throttle.js';
import type { Check } from '../types.js';

export const mailLimits: Check = {
  id: 'mail.limits',
  phase: 'mail',
  describe: 'facts limits.exceeded and baseline.ratio: counts the message against the account\'s plan',
  async run({ session, tx, deps }) {
    if (!tx) return { action: 'continue', skip: 'no transaction' };
    const account = session.account ?? tx.mailFrom;
    const acct = tx.policy.account(account);
    const limits = throttled(acct.limits, tx.throttle);
    const { history, min_messages } = tx.policy.doc.baseline;
    const sessionId = session.sessionCounted ? session.id : undefined;
    const checked = await deps.limiter.checkMessage(account, limits, tx.declaredSize, { history, minMessages: min_messages }, sessionId);
    tx.limitGrant = checked.grant;
    tx.limits = checked.facts;
    if (checked.baseline) {
      tx.baseline = checked.baseline;
      tx.baselineRatio = checked.baseline.ratio;
    }
    if (checked.unavailable) return { action: 'tempfail', reason: 'limits.unavailable', evidence: { degraded: true } };
    return { action: 'continue', evidence: { plan: acct.plan, ...(tx.throttle ? { throttle: tx.throttle } : {}), exceeded: checked.facts.exceeded, usage: checked.facts.usage, ...(checked.facts.degraded ? { degraded: true } : {}), ...(checked.baseline ? { baseline: checked.baseline } : {}) } };
  },
};
