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
    tx.senderAligned = tx.mailFrom === '' || ownedBy(tx, session.account ?? '', tx.mailFrom);
    return { action: 'continue', evidence: { aligned: tx.senderAligned } };
  },
};
