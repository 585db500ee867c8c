// Fingerprints the message's content and counts the distinct recipients that content reached, from this
// account and from all accounts, in the policy's bulk window. Only facts (bulk.*): the rules decide.
// The count is a Redis round trip: it starts as soon as the message is complete (prepare), while clamd
// finishes its scan, and run() takes its result in pipeline order. Counting before the checks ahead of
// this one have run changes nothing that matters: every recipient a content was sent to counts, refused
// ones too (src/bulk/counter.ts), and a retried message adds no new distinct recipients.

import { BulkCountsUnavailable } from '../../bulk/counter.js';
import { fingerprint, type BulkFingerprint } from '../../bulk/fingerprint.js';
import type { BulkFacts } from '../../policy/facts.js';
import type { Transaction } from '../../session/state.js';
import { PreparedLookups } from '../prepared.js';
import type { Check, CheckContext } from '../types.js';

type Counted = { fp: BulkFingerprint | undefined; recipients: number; facts: BulkFacts | undefined };

/** Counts started by prepare(), per transaction. */
const prepared = new PreparedLookups<Counted>();

async function count({ session, tx, deps }: CheckContext & { tx: Transaction }): Promise<Counted> {
  const { window, min_text_length } = tx.policy.doc.bulk;
  const fp = fingerprint(tx.message!, { minTextLength: min_text_length });
  const recipients = tx.recipients.filter((r) => r.accepted).map((r) => r.address);
  return { fp, recipients: recipients.length, facts: await deps.bulk.count(fp, session.account ?? tx.mailFrom, recipients, window) };
}

export const dataBulk: Check = {
  id: 'data.bulk',
  phase: 'data',
  describe: 'facts bulk.account_recipients, bulk.global_recipients, bulk.global_accounts: one content to many recipients',
  prepare(ctx) {
    const { tx } = ctx;
    if (tx?.message) prepared.start(tx, () => count({ ...ctx, tx }));
  },
  async run(ctx) {
    const { tx, deps } = ctx;
    if (!tx?.message) return { action: 'continue', skip: 'message not inspected' };
    let counted: Counted;
    try {
      counted = await prepared.take(tx, () => count({ ...ctx, tx }));
    } catch (err) {
      // Nothing unchecked: without the shared counts, and without insurance, the message waits.
      if (err instanceof BulkCountsUnavailable) return { action: 'tempfail', reason: 'limits.unavailable', evidence: { degraded: true, bulk: err.message } };
      throw err;
    }
    const { fp, facts } = counted;
    tx.bulk = facts;
    if (!facts) return { action: 'continue', skip: fp ? 'bulk counts not available' : 'nothing to fingerprint' };
    // Seen before: this content already reached more recipients than this message alone carries.
    deps.metrics.bulkChecks.labels(facts.globalRecipients > counted.recipients ? 'seen' : 'new').inc();
    return { action: 'continue', evidence: { ...facts, basis: fp?.basis ?? 'given' } };
  },
};
