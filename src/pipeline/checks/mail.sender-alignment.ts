// Does the envelope sender belong to the authenticated account (its address, an alias, or its domain
// with sender.same_domain)? Only a fact: the policy's rules decide what a mismatch means.

import { ownedBy } from '../../policy/owns.js';
import type { Check } from '../types.js';

export const mailSenderAlignment: Check = {
  id: 'mail.sender-alignment',
  phase: 'mail',
  describe: 'fact sender.aligned: the envelope sender is the account\'s address, alias or domain',
  run({ session, tx }) {
    if (!tx) return { action: 'continue', skip: 'no transaction' };
    if (session.listener.mode === 'trusted') return { action: 'continue', skip: 'trusted listener: the sender is the account' };
    // The null sender is for bounces and auto-replies; it names no one, so it cannot be someone else's.
    const aligned = tx.mailFrom === '' || ownedBy(tx, session.account ?? '', tx.mailFrom);
    tx.senderAligned = aligned;
    // Not the account's own, and its aliases unknown (the lifecycle API is down): a rule that refuses on it
    // would refuse, and strike, what may be a legitimate alias. It gets a tempfail instead (evaluateRules).
    if (!aligned && tx.aliasesUnknown) {
      tx.unverified = { fields: new Set([...(tx.unverified?.fields ?? []), 'sender.aligned']), address: tx.mailFrom };
      return { action: 'continue', evidence: { aligned: 'unknown' } };
    }
    return { action: 'continue', evidence: { aligned } };
  },
};
