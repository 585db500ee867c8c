// Refuses AUTH for a while after too many failures from one address or for one account (art. 4.1),
// before the credentials reach the upstream. The limits are the policy's `auth` section. Failures count
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
    const { blocked, retryAfter, unavailable } = await deps.limiter.authBlocked(session.remoteAddress, deps.accounts.known(comparableAddress(authUser ?? '')), limits);
    if (unavailable) return { action: 'tempfail', reason: 'auth.limits_unavailable', evidence: { degraded: true } };
    if (!blocked) return { action: 'continue' };
    return { action: 'tempfail', reason: 'auth.blocked', detail: { retry: humanDuration(retryAfter) }, evidence: { blocked, retry_after: retryAfter } };
  },
};
