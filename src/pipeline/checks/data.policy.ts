// The policy's data-phase rules, in file order; see policies/README.md.

import type { Check } from '../types.js';
import { evaluateRules } from './policy-rules.js';

export const dataPolicy: Check = {
  id: 'data.policy',
  phase: 'data',
  describe: 'the policy rules of the data phase, in order (douane policy explain shows each)',
  run: (ctx) => evaluateRules('data', ctx),
};
