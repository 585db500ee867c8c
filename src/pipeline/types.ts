// The shape of a check and of what it may look at. Checks get everything through CheckContext —
// configuration, session, transaction and dependencies — so a unit test needs no socket.

import type { Config } from '../config/schema.js';
import type { Metrics } from '../metrics.js';
import type { Policy } from '../policy/policy.js';
import type { StrikeSink } from '../policy/strikes.js';
import type { LimiterPort } from '../limits/limiter.js';
import type { BulkPort } from '../bulk/counter.js';
import type { AccountStatusPort } from '../enforce/enforcer.js';
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
  /** the policy in force now (a transaction keeps the one it started with: tx.policy) */
  policy(): Policy;
  strikes: StrikeSink;
  metrics: Metrics;
  limiter: LimiterPort;
  bulk: BulkPort;
  accounts: AccountStatusPort;
}

export interface CheckContext {
  phase: Phase;
  config: Readonly<Config>;
  deps: CheckDeps;
  session: SessionState;
  tx?: Transaction;
  /** rcpt phase: the recipient being checked */
  recipient?: string;
  /** auth phase: the user name the client gave */
  authUser?: string;
  /** `douane policy explain`: receives each rule's evaluation steps */
  trace?: (entries: RuleTrace[]) => void;
}

export interface RuleTrace {
  rule: string;
  source: string;
  mode: string;
  matched: boolean;
  steps: string[];
}

export interface Check {
  /** "<phase>.<what>", also the file name under checks/ */
  id: string;
  phase: Phase;
  /** one line, printed by `douane pipeline` */
  describe: string;
  run(ctx: CheckContext): Verdict | Promise<Verdict>;
  /**
   * Optional: starts a slow lookup (a Redis round trip) when the phase begins — at MAIL FROM, with the
   * account's state; after DATA, while the virus scan finishes — so that the waits overlap. It decides
   * nothing and never throws; run() picks its result up, and run() alone gives the same verdict.
   */
  prepare?(ctx: CheckContext): void;
}
