// The policy's rcpt-phase rules, in file order; see policies/README.md.

import type { Check } from '../types.js';
import { evaluateRules } from './policy-rules.js';

export const rcptPolicy: Check = {
  id: 'rcpt.policy',
  phase: 'rcpt',
  describe: 'the policy rules of the rcpt phase, in order (douane policy explain shows each)',
  run: (ctx) => evaluateRules('rcpt', ctx),
};
