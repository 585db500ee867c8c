// Caps simultaneous sessions from one address, so one client cannot take every connection slot.

import type { Check } from '../types.js';
import { CONTINUE } from '../verdict.js';

export const connectPerIpCap: Check = {
  id: 'connect.per-ip-cap',
  phase: 'connect',
  describe: 'at most smtp.max_connections_per_ip simultaneous sessions per client address',
  run({ session, deps, config }) {
    const open = deps.connectionsFrom(session.remoteAddress);
    if (open <= config.smtp.max_connections_per_ip) return CONTINUE;
    return {
      action: 'tempfail',
      reason: 'connection.too_many_from_ip',
      detail: { ip: session.remoteAddress, limit: config.smtp.max_connections_per_ip },
      evidence: { open },
    };
  },
};
