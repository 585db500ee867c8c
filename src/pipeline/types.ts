// The shape of a check and of what it may look at. Checks get everything through CheckContext —
// configuration, session, transaction and dependencies — so a unit test needs no socket.

import type { Config } from '../config/schema.js';
import type { SessionState, Transaction } from '../session/state.js';
import type { Phase, Verdict } from './verdict.js';

export interface Clock {
  now(): number;
}

/** Services the checks use; each later capability adds its own (limiter, scanner, policy, …). */
export interface CheckDeps {
  clock: Clock;
  /** open sessions per client address, maintained by the gateway */
  connectionsFrom(ip: string): number;
  /** is this address allowed on this trusted listener? */
  trustedNetwork(listener: string, ip: string): boolean;
}

export interface CheckContext {
  phase: Phase;
  config: Readonly<Config>;
  deps: CheckDeps;
  session: SessionState;
  tx?: Transaction;
  /** rcpt phase: the recipient being checked */
  recipient?: string;
}

export interface Check {
  /** "<phase>.<what>", also the file name under checks/ */
  id: string;
  phase: Phase;
  /** one line, printed by `douane pipeline` */
  describe: string;
  run(ctx: CheckContext): Verdict | Promise<Verdict>;
}
