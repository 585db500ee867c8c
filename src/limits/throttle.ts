// A throttled account (strike ladder step "throttle") sends within its plan's rate and volume limits
// times a factor. How many sessions it may hold at once and how many recipients one message may have stay
// as they are: a customer's phone and laptop, or a meeting invitation, are not the abuse being slowed, and
// refusing them would only add strikes.

import type { Limits } from '../policy/schema.js';

const NOT_THROTTLED: readonly (keyof Limits)[] = ['concurrent_sessions', 'recipients_per_message'];

export function throttled(limits: Limits, factor: number | undefined): Limits {
  if (factor === undefined || factor >= 1) return limits;
  const out = { ...limits };
  for (const k of Object.keys(out) as (keyof Limits)[]) if (!NOT_THROTTLED.includes(k)) out[k] = Math.max(1, Math.floor(out[k] * factor));
  return out;
}
