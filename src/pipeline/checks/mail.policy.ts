// The policy's mail-phase rules, in file order; see policies/README.md.

import type { Check } from '../types.js';
import { evaluateRules } from './policy-rules.js';

export const mailPolicy: Check = {
  id: 'mail.policy',
  phase: 'mail',
  describe: 'the policy rules of the mail phase, in order (douane policy explain shows each)',
  run: (ctx) => evaluateRules('mail', ctx),
};
