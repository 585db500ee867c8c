// A throttled account (strike ladder step "throttle") sends within its plan's limits times a factor.

import type { Limits } from '../policy/schema.js';

export function throttled(limits: Limits, factor: number | undefined): Limits {
  if (factor === undefined || factor >= 1) return limits;
  const out = { ...limits };
  for (const k of Object.keys(out) as (keyof Limits)[]) out[k] = Math.max(1, Math.floor(out[k] * factor));
  return out;
}
