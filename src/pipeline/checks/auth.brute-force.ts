// Refuses AUTH for a while after too many failures from one address or for one account (art. 4.1),
// before the credentials reach the upstream. Each attempt counts as a failure until it is known not to be
// one, so that many attempts at once do not all get through. The limits are the policy's `auth` section. Failures count
// against the account a login is known to belong to, so that its aliases do not each get their own tries.

import { comparableAddress } from '../../policy/facts.js';
import { humanDuration } from '../../policy/policy.js';
import type { Check } from '../types.js';

export const authBruteForce: Check = {
  id: 'auth.brute-force',
  phase: 'auth',
  describe: 'no AUTH from an address or for an account blocked after repeated failures (policy: auth)',
  async run({ session, deps, authUser }) {
    const limits = deps.policy().doc.auth;
    const attempt = await deps.limiter.authAttempt(session.remoteAddress, deps.accounts.known(comparableAddress(authUser ?? '')), limits);
    const { blocked, busy, retryAfter, unavailable } = attempt;
    if (unavailable) return { action: 'tempfail', reason: 'auth.limits_unavailable', evidence: { degraded: true } };
    // Counted already: the AUTH handler says how it ended.
    if (!blocked) {
      session.authAttempt = attempt;
      return { action: 'continue' };
    }
    if (busy) return { action: 'tempfail', reason: 'auth.too_many_at_once', evidence: { busy: blocked } };
    return { action: 'tempfail', reason: 'auth.blocked', detail: { retry: humanDuration(retryAfter) }, evidence: { blocked, retry_after: retryAfter } };
  },
};
