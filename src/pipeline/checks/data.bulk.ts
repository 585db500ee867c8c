// Fingerprints the message's content and counts the distinct recipients that content reached, from this
// account and from all accounts, in the policy's bulk window. Only facts (bulk.*): the rules decide.

import { fingerprint } from '../../bulk/fingerprint.js';
import type { Check } from '../types.js';

export const dataBulk: Check = {
  id: 'data.bulk',
  phase: 'data',
  describe: 'facts bulk.account_recipients, bulk.global_recipients, bulk.global_accounts: one content to many recipients',
  async run({ session, tx, deps }) {
    if (!tx?.message) return { action: 'continue', skip: 'message not inspected' };
    const { window, min_text_length } = tx.policy.doc.bulk;
    const fp = fingerprint(tx.message, { minTextLength: min_text_length });
    const recipients = tx.recipients.filter((r) => r.accepted).map((r) => r.address);
    tx.bulk = await deps.bulk.count(fp, session.account ?? tx.mailFrom, recipients, window);
    if (!tx.bulk) return { action: 'continue', skip: fp ? 'bulk counts not available' : 'nothing to fingerprint' };
    // Seen before: this content already reached more recipients than this message alone carries.
    deps.metrics.bulkChecks.labels(tx.bulk.globalRecipients > recipients.length ? 'seen' : 'new').inc();
    return { action: 'continue', evidence: { ...tx.bulk, basis: fp?.basis ?? 'given' } };
  },
};
