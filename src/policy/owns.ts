// Does an address belong to the account: its own, an alias from the policy or from the lifecycle API,
// or (sender.same_domain) its domain?

import type { Transaction } from '../session/state.js';
import { matchesAny } from './policy.js';

export function ownedBy(tx: Transaction, account: string, address: string): boolean {
  return tx.policy.owns(account, address) || matchesAny(address, tx.aliases ?? []);
}
