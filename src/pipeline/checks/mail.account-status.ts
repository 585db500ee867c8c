// Is the account allowed to send? A suspension decided by the strike ladder (or a person) blocks it here,
// on every instance at once — this is not a rule, so no policy change can lift it by mistake. The
// lifecycle API's status (locked, suspended for non-payment, closed) becomes the fact account.status for
// the rules, its aliases count as the account's own addresses, and a throttle lowers its limits.

import type { Check } from '../types.js';

export const mailAccountStatus: Check = {
  id: 'mail.account-status',
  phase: 'mail',
  describe: 'a suspended account is refused; fact account.status from the lifecycle API; throttles and aliases',
  async run({ session, tx, deps, config }) {
    if (!tx) return { action: 'continue', skip: 'no transaction' };
    const account = session.account ?? tx.mailFrom;
    const found = await deps.accounts.lookup(account);
    if (found.lifecycle) {
      tx.accountStatus = found.lifecycle.status;
      tx.aliases = found.lifecycle.aliases;
      tx.reportedPlan = found.lifecycle.plan;
    } else if (found.lifecycleUnknown) {
      // Not "unknown" (the API does not know the account): a rule can tell the two apart, and tempfail
      // while the API is down if the provider would rather (policies/README.md).
      tx.accountStatus = 'unavailable';
      tx.aliasesUnknown = true;
    }
    if (found.state.throttle) tx.throttle = found.state.throttle.factor;
    const s = found.state.suspension;
    if (s) {
      return {
        action: 'reject',
        reason: 'account.suspended',
        // Art. 4.6 is where the contract lets the provider suspend the service; a suspension made by hand,
        // or before suspensions kept their rule, names it.
        rule: { id: s.rule ?? 'enforcement.suspension', article: s.article ?? '4.6' },
        detail: { account, since: new Date(s.since).toISOString().slice(0, 16).replace('T', ' ') + ' UTC', incident: s.reference, contact: config.enforcement.contact },
        evidence: { suspension: s },
      };
    }
    // A plan the policy does not define is left aside (the account's domain or default_plan decides): said
    // in the transaction's evidence, where a mapping that is missing (lifecycle.zimbra.cos_plans) shows.
    const plan = tx.reportedPlan === undefined ? {} : tx.policy.definesPlan(tx.reportedPlan) ? { plan: tx.reportedPlan } : { plan_not_in_policy: tx.reportedPlan };
    return { action: 'continue', evidence: { status: tx.accountStatus ?? 'unknown', ...plan, ...(tx.throttle ? { throttle: tx.throttle } : {}), ...(found.degraded ? { degraded: found.degraded } : {}), ...(found.suspensionsUnknown ? { suspensions: 'unknown: the shared state was never read since this instance started' } : {}) } };
  },
};
