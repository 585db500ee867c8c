// Refuses at MAIL a message whose declared SIZE= is over the limit, before the client sends it.

import type { Check } from '../types.js';
import { CONTINUE } from '../verdict.js';

export const mailDeclaredSize: Check = {
  id: 'mail.declared-size',
  phase: 'mail',
  describe: 'a SIZE= declared at MAIL FROM must not exceed smtp.max_message_size',
  run({ tx, config }) {
    if (tx?.declaredSize === undefined) return { action: 'continue', skip: 'no SIZE= declared' };
    if (tx.declaredSize <= config.smtp.max_message_size) return CONTINUE;
    return {
      action: 'reject',
      reason: 'message.too_big',
      detail: { limit: config.smtp.max_message_size },
      evidence: { declared: tx.declaredSize },
    };
  },
};
