// What the configuration and the policy say that does not fit together, though each is valid alone.
// Said by `douane policy check --config`, and logged by serve at start and at each policy reload.

import type { Policy } from '../policy/policy.js';
import type { Config } from './schema.js';

export function configPolicyWarnings(config: Readonly<Config>, policy: Policy): string[] {
  const warnings: string[] = [];
  const scanning = policy.doc.scanning;
  const max = config.smtp.max_message_size;
  // EHLO advertises SIZE=max: a client sends a message up to it, whole, to be refused after its last byte.
  if (config.clamd !== 'none' && scanning.over_max_size !== 'skip' && max > scanning.max_size) {
    const outcome = scanning.over_max_size === 'reject' ? 'refused (552 5.3.4)' : 'tempfailed (451), again at every retry';
    warnings.push(
      `smtp.max_message_size (${max} bytes) is above the policy's scanning.max_size (${scanning.max_size} bytes): a message between the two is taken whole, then ${outcome} as too big to scan; lower smtp.max_message_size, or raise scanning.max_size (and clamd's StreamMaxLength)`,
    );
  }
  // A listener a rule names by a name the configuration does not have: that comparison never holds.
  const listeners = Object.keys(config.listeners);
  for (const rule of policy.rules) {
    for (const compared of rule.condition.compared) {
      if (compared.field !== 'listener') continue;
      for (const name of compared.values) {
        if (!listeners.includes(name)) warnings.push(`${rule.source}: rule ${rule.id} compares listener with "${name}", which is not a listener of the configuration (${listeners.join(', ')}): that comparison never holds`);
      }
    }
  }
  // A class of service mapped to a plan the policy does not define: its accounts get default_plan.
  const cosPlans = config.lifecycle.zimbra?.cos_plans ?? {};
  for (const [cos, plan] of Object.entries(cosPlans)) {
    if (!policy.definesPlan(plan)) warnings.push(`lifecycle.zimbra.cos_plans maps class of service ${cos} to plan "${plan}", which the policy does not define (${Object.keys(policy.doc.plans).join(', ')}): its accounts get default_plan (${policy.doc.default_plan})`);
  }
  return warnings;
}
