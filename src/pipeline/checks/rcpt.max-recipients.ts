// Caps recipients per message. 452 lets the client send the rest in another transaction (RFC 5321 4.5.3.1.10).

import type { Check } from '../types.js';
import { CONTINUE } from '../verdict.js';

export const rcptMaxRecipients: Check = {
  id: 'rcpt.max-recipients',
  phase: 'rcpt',
  describe: 'at most smtp.max_recipients accepted recipients per message',
  run({ tx, config }) {
    const accepted = tx?.recipients.filter((r) => r.accepted).length ?? 0;
    if (accepted < config.smtp.max_recipients) return CONTINUE;
    return { action: 'tempfail', reason: 'recipients.too_many', detail: { limit: config.smtp.max_recipients } };
  },
};
