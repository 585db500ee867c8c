// A message over the size limit that did not declare SIZE= is refused after the final dot.

import type { Check } from '../types.js';
import { CONTINUE } from '../verdict.js';

export const dataSize: Check = {
  id: 'data.size',
  phase: 'data',
  describe: 'the message must not exceed smtp.max_message_size',
  run({ tx, config }) {
    if (!tx?.oversize) return CONTINUE;
    return { action: 'reject', reason: 'message.too_big', detail: { limit: config.smtp.max_message_size }, evidence: { size: tx.size } };
  },
};
