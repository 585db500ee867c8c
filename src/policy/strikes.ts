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
  record(event: StrikeEvent): void;
}

export class LoggingStrikeSink implements StrikeSink {
  constructor(
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {}

  record(e: StrikeEvent): void {
    this.metrics.strikes.labels(e.event).inc();
    this.log.info({ ...e, event: 'strike', strike: e.event }, `strike ${e.event} (+${e.weight}) for ${e.account}`);
  }
}
