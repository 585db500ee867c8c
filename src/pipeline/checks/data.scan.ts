// The virus scan's outcome. Infected or clean is a fact for the rules (malware.found quarantines). A
// message that could not be scanned is tempfailed — nothing passes unchecked — unless the policy says
// scanning.fail_open: then it goes through tagged (and is counted once relayed, by its tag). A message over scanning.max_size is
// handled as scanning.over_max_size says (reject, tempfail, or skip unscanned).

import type { Check } from '../types.js';

export const dataScan: Check = {
  id: 'data.scan',
  phase: 'data',
  describe: 'fact scan.result from clamd; could not scan → 451 4.3.0 unless the policy says fail-open',
  run({ tx }) {
    if (!tx) return { action: 'continue', skip: 'no transaction' };
    const scanning = tx.policy.doc.scanning;
    if (tx.scanTooBig) {
      if (scanning.over_max_size === 'reject') return { action: 'reject', reason: 'scan.too_big', detail: { limit: scanning.max_size }, evidence: { size: tx.size } };
      if (scanning.over_max_size === 'tempfail') return { action: 'tempfail', reason: 'message.unscannable', evidence: { size: tx.size, max_size: scanning.max_size } };
      tx.scan = { result: 'skipped', detail: `over scanning.max_size (${scanning.max_size} bytes)` };
      tx.tags.push('scan.skipped');
      return { action: 'continue', evidence: { ...tx.scan } };
    }
    if (!tx.scan) return { action: 'continue', skip: 'clamd: none in the configuration' };
    if (tx.scan.result !== 'error') return { action: 'continue', evidence: { ...tx.scan } };
    if (scanning.fail_open) {
      tx.tags.push('scan.failed');
      return { action: 'continue', evidence: { ...tx.scan, fail_open: true } };
    }
    return { action: 'tempfail', reason: 'message.unscannable', evidence: { ...tx.scan } };
  },
};
