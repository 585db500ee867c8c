// Strike events: what a rule (or the brute-force limiter) records against an account when it refuses
// something. The policy defines the events and their weights; a StrikeSink receives each event. The
// enforcement ladder (notify → throttle → suspend) is one such sink; the default only logs and counts.

import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';

export interface StrikeEvent {
  account: string;
  event: string;
  weight: number;
  /** the rule that recorded it, and its contract article */
  rule?: string;
  article?: string;
  /** incident reference of the transaction or session */
  reference: string;
  policyVersion: string;
  /** facts that justify it: message id, signature, counters, fingerprint, … */
  evidence: Record<string, unknown>;
  at: number;
}

export interface StrikeSink {
  /** resolves once the strike is counted and its ladder steps taken, so that a suspension it causes
   *  is in force before the client gets the reply to the message that caused it */
  record(event: StrikeEvent): Promise<void>;
}

/**
 * A strike's log line, with the names a transaction's line uses for the same things (`ref`, `policy`):
 * one search for a reference or a policy version finds both.
 */
export function logStrike(log: Logger, e: StrikeEvent): void {
  log.info(
    { event: 'strike', ref: e.reference, account: e.account, strike: e.event, weight: e.weight, rule: e.rule, article: e.article, policy: e.policyVersion, evidence: e.evidence },
    `strike ${e.event} (+${e.weight}) for ${e.account}`,
  );
}

export class LoggingStrikeSink implements StrikeSink {
  constructor(
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {}

  async record(e: StrikeEvent): Promise<void> {
    this.metrics.strikes.labels(e.event).inc();
    logStrike(this.log, e);
  }
}
