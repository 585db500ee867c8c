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
  return warnings;
}
