// A message over the size limit that did not declare SIZE= is refused after the final dot; so is one
// larger than its account may send in a whole day, which no retry could ever get through.

import type { Check } from '../types.js';
import { CONTINUE } from '../verdict.js';

export const dataSize: Check = {
  id: 'data.size',
  phase: 'data',
  describe: 'the message must not exceed smtp.max_message_size, nor the plan\'s bytes_per_day on its own',
  run({ session, tx, config }) {
    if (!tx) return CONTINUE;
    if (tx.oversize) return { action: 'reject', reason: 'message.too_big', detail: { limit: config.smtp.max_message_size }, evidence: { size: tx.size } };
    const acct = tx.policy.account(session.account ?? tx.mailFrom, tx.reportedPlan);
    const day = acct.limits.bytes_per_day;
    if (tx.size !== undefined && tx.size > day) return { action: 'reject', reason: 'message.over_daily_volume', detail: { size: tx.size, limit: day }, evidence: { plan: acct.plan, size: tx.size, bytes_per_day: day } };
    return CONTINUE;
  },
};
