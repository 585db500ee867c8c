// SMTP smuggling protection: a message with a bare CR, bare LF or NUL is refused whole, nothing relayed.

import type { Check } from '../types.js';
import { CONTINUE } from '../verdict.js';

export const dataLineEndings: Check = {
  id: 'data.line-endings',
  phase: 'data',
  describe: 'every line of the message ends with CR LF; no bare CR, bare LF or NUL (SMTP smuggling)',
  run({ tx }) {
    const f = tx?.lineEndings;
    if (!f) return { action: 'tempfail', reason: 'internal.check_failed', evidence: { missing: 'line-ending facts' } };
    if (f.bareCr === 0 && f.bareLf === 0 && f.nul === 0) return CONTINUE;
    return {
      action: 'reject',
      reason: f.nul > 0 && f.bareCr === 0 && f.bareLf === 0 ? 'message.nul_byte' : 'message.bare_line_ending',
      evidence: { ...f },
    };
  },
};
