// Counts the message against the account's message limits (per minute, hour, day), checks the day's
// bytes and the open sessions, and measures the account against its usual hourly volume. Only facts
// (limits.exceeded, baseline.ratio): the policy's rules decide. The counts are given back unless the
// upstream accepts the message.
//
// The counting starts with the phase (prepare), in the same Redis round trip as the account's state read
// by mail.account-status, so that MAIL FROM waits for Redis once and not twice; run() judges the counts in
// pipeline order, against the limits lowered by a throttle that check may have found. When a check before
// this one refuses the message, what was counted is given back like any refused message's.

import { throttled } from '../../limits/throttle.js';
import type { MessageCount } from '../../limits/limiter.js';
import type { Transaction } from '../../session/state.js';
import { PreparedLookups } from '../prepared.js';
import type { Check, CheckContext } from '../types.js';

/** Counts started by prepare(), per transaction. */
const prepared = new PreparedLookups<MessageCount>();

function count({ session, tx, deps }: CheckContext & { tx: Transaction }): Promise<MessageCount> {
  const account = session.account ?? tx.mailFrom;
  const { history, min_messages } = tx.policy.doc.baseline;
  const open = session.sessionCounted && session.sessionExpiresAt ? { id: session.id, expiresAt: session.sessionExpiresAt } : undefined;
  return deps.limiter.countMessage(account, tx.policy.account(account, tx.reportedPlan).limits, tx.declaredSize, { history, minMessages: min_messages }, open);
}

export const mailLimits: Check = {
  id: 'mail.limits',
  phase: 'mail',
  describe: 'facts limits.exceeded and baseline.ratio: counts the message against the account\'s plan',
  prepare(ctx) {
    const { tx, deps } = ctx;
    if (!tx) return;
    prepared.start(tx, () =>
      count({ ...ctx, tx }).then((counted) => {
        // Refused (or the client left) before the count came back: nothing will settle it but this.
        if (tx.done) void deps.limiter.refund(counted.grant);
        else tx.limitGrant = counted.grant;
        return counted;
      }),
    );
  },
  async run(ctx) {
    const { session, tx } = ctx;
    if (!tx) return { action: 'continue', skip: 'no transaction' };
    const counted = await prepared.take(tx, () => count({ ...ctx, tx }));
    tx.limitGrant = counted.grant;
    const acct = tx.policy.account(session.account ?? tx.mailFrom, tx.reportedPlan);
    const checked = counted.judge(throttled(acct.limits, tx.throttle));
    tx.limits = checked.facts;
    if (checked.baseline) {
      tx.baseline = checked.baseline;
      tx.baselineRatio = checked.baseline.ratio;
    }
    // A SIZE= over the plan's whole day (not the throttled one, which lifts) would be delayed on every
    // retry until the client gives up days later: it is refused for good instead, Redis or not.
    const day = acct.limits.bytes_per_day;
    if (tx.declaredSize !== undefined && tx.declaredSize > day) {
      return { action: 'reject', reason: 'message.over_daily_volume', detail: { size: tx.declaredSize, limit: day }, evidence: { plan: acct.plan, declared: tx.declaredSize, bytes_per_day: day } };
    }
    if (checked.unavailable) return { action: 'tempfail', reason: 'limits.unavailable', evidence: { degraded: true } };
    return { action: 'continue', evidence: { plan: acct.plan, ...(tx.throttle ? { throttle: tx.throttle } : {}), exceeded: checked.facts.exceeded, usage: checked.facts.usage, ...(checked.facts.degraded ? { degraded: true } : {}), ...(checked.baseline ? { baseline: checked.baseline } : {}) } };
  },
};
