// Do the From: and Sender: addresses belong to the account? Only a fact (from.aligned, from.count): the
// policy's rules decide. Phishing from a stolen account usually shows here (art. 4.1).

import { ownedBy } from '../../policy/owns.js';
import type { Check } from '../types.js';

export const dataSenderAlignment: Check = {
  id: 'data.sender-alignment',
  phase: 'data',
  describe: 'fact from.aligned: every From:/Sender: address is the account\'s address, alias or domain',
  run({ session, tx }) {
    if (!tx?.message) return { action: 'continue', skip: 'message not inspected' };
    const account = session.account ?? tx.mailFrom;
    const addresses = [...tx.message.from, ...(tx.message.sender ? [tx.message.sender] : [])];
    // No From: at all names no one else (from.count tells that case apart).
    const unowned = addresses.find((a) => !ownedBy(tx, account, a));
    tx.fromAligned = unowned === undefined;
    // As for the envelope sender: an address that may be an alias the lifecycle API would have named.
    if (unowned !== undefined && tx.aliasesUnknown) {
      tx.unverified = { fields: new Set([...(tx.unverified?.fields ?? []), 'from.aligned']), address: unowned };
      return { action: 'continue', evidence: { aligned: 'unknown', from: tx.message.from } };
    }
    return { action: 'continue', evidence: { aligned: tx.fromAligned, from: tx.message.from } };
  },
};
