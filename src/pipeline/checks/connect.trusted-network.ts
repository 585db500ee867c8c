// A trusted listener accepts mail without AUTH, so only the hosts in its allow list may use it.

import type { Check } from '../types.js';
import { CONTINUE } from '../verdict.js';

export const connectTrustedNetwork: Check = {
  id: 'connect.trusted-network',
  phase: 'connect',
  describe: 'trusted listener: the client address must be in the listener\'s allow list',
  run({ session, deps }) {
    if (session.listener.mode !== 'trusted') return { action: 'continue', skip: 'not a trusted listener' };
    if (deps.trustedNetwork(session.listener.name, session.remoteAddress)) return CONTINUE;
    return { action: 'reject', reason: 'connection.not_allowed', detail: { ip: session.remoteAddress } };
  },
};
