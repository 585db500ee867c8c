// Every Prometheus metric Douane exports, defined here and nowhere else. Labels never carry an account or
// an address (those go to the logs): label values come from small fixed sets.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const SIZE_BUCKETS = [1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 10485760, 26214400, 52428800];
// Up to the longest default timeouts (clamd and upstream commands 60 s, a message's data 600 s): a frozen
// clamd or a slow MTA shows in a p99 as what it is, not as 30 s.
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

export class Metrics {
  readonly registry = new Registry();

  readonly readiness = new Gauge({ name: 'douane_readiness', help: 'Result of each readiness check at its last run (1 ready, 0 not): listeners, upstream, clamd, redis', labelNames: ['check'], registers: [this.registry] });
  readonly buildInfo = new Gauge({ name: 'douane_build_info', help: 'Douane version and Node.js version (always 1)', labelNames: ['version', 'node'], registers: [this.registry] });
  readonly sessionsActive = new Gauge({ name: 'douane_sessions_active', help: 'Client sessions open now', labelNames: ['listener'], registers: [this.registry] });
  readonly sessions = new Counter({ name: 'douane_sessions_total', help: 'Client sessions by listener and how they ended: mail (a transaction at least), no_mail, refused (at connect), ended_by_douane (a closing 421: the session deadline or idle timeout, too many errors or refused recipients, a shutdown)', labelNames: ['listener', 'outcome'], registers: [this.registry] });
  readonly auth = new Counter({ name: 'douane_auth_total', help: 'AUTH attempts by result: success, failure (wrong credentials), too_many_failures, upstream_tempfail / upstream_error (the MTA), blocked (brute force held off), too_many_at_once (more logins in flight than the limit lets fail: the others wait), limits_unavailable (Redis: logins cannot be checked), error (a check failed)', labelNames: ['result'], registers: [this.registry] });
  readonly transactions = new Counter({ name: 'douane_transactions_total', help: 'Mail transactions by final verdict and reason', labelNames: ['listener', 'verdict', 'reason'], registers: [this.registry] });
  readonly recipients = new Counter({ name: 'douane_recipients_total', help: 'Recipients by result: accepted, refused_by_douane, refused_by_upstream (its own answer), upstream_unavailable (tempfailed by Douane because the upstream failed)', labelNames: ['result'], registers: [this.registry] });
  readonly replies = new Counter({ name: 'douane_replies_total', help: 'Replies sent to clients by phase and class', labelNames: ['phase', 'class'], registers: [this.registry] });
  readonly tlsHandshakeFailures = new Counter({ name: 'douane_tls_handshake_failures_total', help: 'TLS handshakes that failed, by listener (on 465 at connect, or after STARTTLS): clients on TLS 1.0/1.1, certificate mismatches, plain text on a TLS port', labelNames: ['listener'], registers: [this.registry] });
  readonly refusals = new Counter({ name: 'douane_refusals_total', help: 'Refusals by Douane by phase and reason', labelNames: ['phase', 'reason'], registers: [this.registry] });
  readonly checkResults = new Counter({ name: 'douane_check_results_total', help: 'Check outcomes by check and result', labelNames: ['check', 'result'], registers: [this.registry] });
  readonly secondLooks = new Counter({ name: 'douane_inspection_second_looks_total', help: 'Messages inspected again in an inspection thread because their first look ran out of its budget (large compressed archives), by result (inspected, failed: tempfailed)', labelNames: ['result'], registers: [this.registry] });
  readonly inspectionThreadFailures = new Counter({ name: 'douane_inspection_thread_failures_total', help: 'Inspection threads that died or were stopped stuck on a message (that message was tempfailed; a new thread takes the next)', registers: [this.registry] });
  readonly messageSize = new Histogram({ name: 'douane_message_size_bytes', help: 'Size of received messages', buckets: SIZE_BUCKETS, registers: [this.registry] });
  readonly phaseDuration = new Histogram({ name: 'douane_phase_duration_seconds', help: 'Time Douane spent answering each phase, the upstream included; for data, from the final dot on (not the time the client takes to send its message)', labelNames: ['phase'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly transactionDuration = new Histogram({ name: 'douane_transaction_duration_seconds', help: 'From MAIL FROM to the final reply', buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly upstreamReplies = new Counter({ name: 'douane_upstream_replies_total', help: 'Upstream replies by command and class', labelNames: ['command', 'class'], registers: [this.registry] });
  readonly upstreamErrors = new Counter({ name: 'douane_upstream_errors_total', help: 'Upstream connection failures by kind (connect, timeout, closed, protocol, tls, refused, internal; session_lost: an authenticated session the upstream ended, the client then gets 421)', labelNames: ['kind'], registers: [this.registry] });

  readonly policyInfo = new Gauge({ name: 'douane_policy_info', help: 'Policy version in force (1) and the version it replaced (0)', labelNames: ['version'], registers: [this.registry] });
  readonly policyReloads = new Counter({ name: 'douane_policy_reloads_total', help: 'Policy reloads by result (a failed reload keeps the last good policy)', labelNames: ['result'], registers: [this.registry] });
  readonly policyLastReloadSuccess = new Gauge({ name: 'douane_policy_last_reload_success', help: '1 if the last policy reload succeeded (or none was tried), 0 if it failed', registers: [this.registry] });
  readonly policyRules = new Gauge({ name: 'douane_policy_rules', help: 'Rules in the policy in force, by phase and mode', labelNames: ['phase', 'mode'], registers: [this.registry] });
  readonly policyMatches = new Counter({ name: 'douane_policy_matches_total', help: 'Enforced rule matches by rule and action', labelNames: ['rule', 'action'], registers: [this.registry] });
  readonly policyWould = new Counter({ name: 'douane_policy_would_total', help: 'Monitor-mode rule matches: what the rule would have done', labelNames: ['rule', 'action'], registers: [this.registry] });
  readonly strikes = new Counter({ name: 'douane_strikes_total', help: 'Strike events recorded, by event', labelNames: ['event'], registers: [this.registry] });

  readonly limiterDecisions = new Counter({ name: 'douane_limiter_decisions_total', help: 'Limit checks by limit and result (ok, exceeded)', labelNames: ['limit', 'result'], registers: [this.registry] });
  readonly limiterInsurance = new Counter({ name: 'douane_limiter_insurance_total', help: 'Limiter operations answered by the in-process insurance because Redis failed', labelNames: ['op'], registers: [this.registry] });
  readonly redisErrors = new Counter({ name: 'douane_redis_errors_total', help: 'Redis failures by kind (connection, command, deadline, hang: a command timed out on an open connection, which is then dropped)', labelNames: ['kind'], registers: [this.registry] });
  /** Registered by the Redis client when there is one (usesRedis): a gauge at 0 without Redis would say it is down. */
  readonly redisUp = new Gauge({ name: 'douane_redis_up', help: '1 when the Redis connection is ready (absent without Redis)', registers: [] });
  /** Registered once a certificate is in use (tlsCertificateExpiry): at 0 without TLS it would read as long expired. */
  readonly tlsExpiry = new Gauge({ name: 'douane_tls_certificate_expiry_timestamp_seconds', help: 'When the TLS listeners\' certificate stops being valid, in seconds since the epoch (absent without TLS)', registers: [] });

  readonly scans = new Counter({ name: 'douane_scans_total', help: 'Virus scans by result (clean, infected, error)', labelNames: ['result'], registers: [this.registry] });
  readonly scanDuration = new Histogram({ name: 'douane_scan_duration_seconds', help: 'From the end of the message (the final dot) to clamd\'s verdict: the wait scanning adds for the client, however long its upload took', buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly scanErrors = new Counter({ name: 'douane_scan_errors_total', help: 'Failed scans by kind (timeout, unreachable, size_limit, closed, other)', labelNames: ['kind'], registers: [this.registry] });
  readonly scanSignatures = new Counter({ name: 'douane_scan_signatures_total', help: 'Malware found, by signature family (first part of the name)', labelNames: ['family'], registers: [this.registry] });
  readonly scanFailovers = new Counter({ name: 'douane_scan_failovers_total', help: 'Scans retried on another clamd host', registers: [this.registry] });
  readonly scanSkipped = new Counter({ name: 'douane_scan_skipped_total', help: 'Messages let past the virus scan unscanned because they exceed scanning.max_size and the policy says over_max_size: skip', registers: [this.registry] });
  readonly scanFailOpen = new Counter({ name: 'douane_scan_fail_open_total', help: 'Messages relayed unscanned because scanning failed and the policy says fail-open', registers: [this.registry] });
  readonly clamdUp = new Gauge({ name: 'douane_clamd_up', help: '1 if clamd answered PING at the last check (readiness, or the probe of a host set aside after a failed scan); 0 from that failure on', labelNames: ['scanner'], registers: [this.registry] });

  readonly bulkChecks = new Counter({ name: 'douane_bulk_checks_total', help: 'Messages fingerprinted for bulk detection, by whether their content was already seen in the window (new, seen)', labelNames: ['result'], registers: [this.registry] });
  readonly quarantined = new Counter({ name: 'douane_quarantined_total', help: 'Messages put in quarantine, by reason', labelNames: ['reason'], registers: [this.registry] });
  readonly quarantineSize = new Gauge({ name: 'douane_quarantine_messages', help: 'Messages in quarantine now', registers: [this.registry] });
  readonly quarantineBytes = new Gauge({ name: 'douane_quarantine_bytes', help: 'Bytes of messages in quarantine now', registers: [this.registry] });

  readonly suspensions = new Counter({ name: 'douane_suspensions_total', help: 'Enforcement actions by action (notify, throttle, suspend_sending, suspend_account, reinstate) and result (done, dry_run, pending_approval, skipped_allowlist, skipped_unverified: the never-suspend list could not be checked, blocked_breaker)', labelNames: ['action', 'result'], registers: [this.registry] });
  readonly suspendedAccounts = new Gauge({ name: 'douane_suspended_accounts', help: 'Accounts suspended in Douane now (known to this instance at the last check)', registers: [this.registry] });
  readonly enforcementStateLost = new Counter({ name: 'douane_enforcement_state_lost_total', help: 'Times the shared enforcement state was found lost (Redis restarted empty, or a replica without it); the suspensions known here were written back', registers: [this.registry] });
  readonly lifecycleCalls = new Counter({ name: 'douane_lifecycle_calls_total', help: 'Lifecycle API calls by adapter, operation and result (ok, error kind)', labelNames: ['adapter', 'op', 'result'], registers: [this.registry] });
  readonly lifecycleDuration = new Histogram({ name: 'douane_lifecycle_call_duration_seconds', help: 'Lifecycle API call duration', labelNames: ['adapter', 'op'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly outboxDepth = new Gauge({ name: 'douane_outbox_jobs', help: 'Jobs waiting in the durable outbox, by kind (lifecycle, notify, webhook, strike: one counted while the enforcement state did not answer)', labelNames: ['kind'], registers: [this.registry] });
  readonly outboxOldest = new Gauge({ name: 'douane_outbox_oldest_seconds', help: 'Age of the oldest job waiting in the outbox', registers: [this.registry] });
  readonly outboxAttempts = new Counter({ name: 'douane_outbox_attempts_total', help: 'Outbox job attempts by kind and result (done, retry, failed); kind unreadable: a job file that could not be read at start, set aside in failed/', labelNames: ['kind', 'result'], registers: [this.registry] });
  readonly breakerOpen = new Gauge({ name: 'douane_circuit_breaker_open', help: '1 when automatic suspension is stopped by the circuit breaker until a person resets it', registers: [this.registry] });
  readonly notifications = new Counter({ name: 'douane_notifications_total', help: 'Notifications by channel (holder, abuse, webhook) and result', labelNames: ['channel', 'result'], registers: [this.registry] });

  /** Douane has a Redis client: its connection's state is exported from now on, down (0) until it is ready. */
  tlsCertificateExpiry(validTo: Date): void {
    this.tlsExpiry.set(Math.floor(validTo.getTime() / 1000));
    if (!this.registry.getSingleMetric('douane_tls_certificate_expiry_timestamp_seconds')) this.registry.registerMetric(this.tlsExpiry);
  }

  usesRedis(): void {
    if (this.registry.getSingleMetric('douane_redis_up')) return;
    this.redisUp.set(0);
    this.registry.registerMetric(this.redisUp);
  }

  constructor(opts: { version: string; defaultMetrics?: boolean }) {
    this.buildInfo.labels(opts.version, process.version).set(1);
    this.policyLastReloadSuccess.set(1);
    this.breakerOpen.set(0);
    for (const kind of ['lifecycle', 'notify', 'webhook', 'strike']) this.outboxDepth.labels(kind).set(0);
    this.outboxOldest.set(0);
    // Known label values start at 0, so that a first occurrence shows in rate() and increase().
    for (const kind of ['connect', 'timeout', 'closed', 'protocol', 'tls', 'refused', 'internal', 'session_lost']) this.upstreamErrors.labels(kind).inc(0);
    for (const kind of ['connection', 'command', 'deadline', 'hang']) this.redisErrors.labels(kind).inc(0);
    for (const kind of ['timeout', 'unreachable', 'size_limit', 'closed', 'other']) this.scanErrors.labels(kind).inc(0);
    for (const result of ['clean', 'infected', 'error']) this.scans.labels(result).inc(0);
    for (const result of ['inspected', 'failed']) this.secondLooks.labels(result).inc(0);
    for (const result of ['success', 'failure', 'too_many_failures', 'upstream_error', 'upstream_tempfail', 'blocked', 'too_many_at_once', 'limits_unavailable', 'error']) this.auth.labels(result).inc(0);
    for (const result of ['success', 'failure']) this.policyReloads.labels(result).inc(0);
    for (const kind of ['lifecycle', 'notify', 'webhook', 'strike']) for (const result of ['done', 'retry', 'failed']) this.outboxAttempts.labels(kind, result).inc(0);
    this.outboxAttempts.labels('unreadable', 'failed').inc(0);
    for (const action of ['notify', 'throttle', 'suspend_sending', 'suspend_account', 'reinstate']) this.suspensions.labels(action, 'done').inc(0);
    for (const result of ['new', 'seen']) this.bulkChecks.labels(result).inc(0);
    this.scanFailOpen.inc(0);
    this.scanFailovers.inc(0);
    // Under their usual names (process_cpu_seconds_total, nodejs_heap_size_used_bytes), which the common
    // Node.js dashboards read; the job label says whose they are.
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }
}

export function replyClass(code: number): string {
  return `${Math.floor(code / 100)}xx`;
}
