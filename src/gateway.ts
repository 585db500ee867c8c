// The gateway: one smtp-server per listener, the session table, and the handlers that take each SMTP
// command through the pipeline and then to the upstream. A client gets 250 for a message only after the
// upstream said 250 for it; every other path ends in a refusal with a reference, or a 4xx.

import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { cachedProbe, type ReadinessProbe } from './admin.js';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import { configPolicyWarnings } from './config/against-policy.js';
import type { Config, ListenerConfig } from './config/schema.js';
import { LineEndingWatch } from './data/line-endings.js';
import { InspectionPool, MessageInspection } from './inspect/pool.js';
import { securePrivateDir } from './data/private-dir.js';
import { withoutHeaderFields } from './data/header-filter.js';
import { Spool } from './data/spool.js';
import type { Logger } from './log.js';
import { replyClass, type Metrics } from './metrics.js';
import { preparePhase, runPhase, PIPELINE, type PhaseOutcome } from './pipeline/index.js';
import { settlesMessage } from './pipeline/checks/policy-rules.js';
import type { Check, CheckContext, CheckDeps, Clock } from './pipeline/types.js';
import { isRefusal, type Phase, type Verdict } from './pipeline/verdict.js';
import type { ReasonCode } from './reasons.js';
import { comparableAddress, mailboxKey, type MessageFacts } from './policy/facts.js';
import { PolicyStore } from './policy/store.js';
import type { StrikeSink } from './policy/strikes.js';
import { Limiter, type AuthAttempt } from './limits/limiter.js';
import { BulkCounter, type BulkPort } from './bulk/counter.js';
import { ClamdScanner, type ScannerPort } from './scan/clamd.js';
import { auditPurge } from './quarantine/audit.js';
import { LocalQuarantine, type QuarantineStore } from './quarantine/store.js';
import { AuditLog } from './audit/log.js';
import { Enforcer } from './enforce/enforcer.js';
import { Outbox } from './enforce/outbox.js';
import { mailHandler, webhookHandler, type NoticeSmtp } from './enforce/notify.js';
import { FileEnforcementState, RedisEnforcementState } from './enforce/state.js';
import { createLifecycle } from './lifecycle/factory.js';
import type { LifecycleApi } from './lifecycle/types.js';
import { join } from 'node:path';
import { createRedis, redisPing, redisReady, type RedisClient } from './limits/redis.js';
import type { SessionState, Transaction } from './session/state.js';
import { GatewayConnection, GatewaySmtpServer, paramsAsWritten, takeCredentialsAsSent, type ConnectionHooks, type CredentialsAsSent } from './smtp/connection.js';
import { PROTOCOL_ENHANCED, ReplyError, formatWire, newReference, replyFor, type WireReply } from './smtp/replies.js';
import { certificateDates, certificateWarning, loadTlsMaterial, reloadTlsMaterial, type TlsMaterial } from './smtp/tls.js';
import { AddressList, canonicalIp } from './validate/net.js';
import { envelopeParams, type WrittenParams } from './upstream/params.js';
import { endpointsFrom, PooledUpstreamProvider, type ClientIdentity, type UpstreamPort, type UpstreamProvider } from './upstream/provider.js';
import { formatReply, replyText, type SmtpReply } from './upstream/reply.js';
import { UpstreamError, type SmtpClient } from './upstream/smtp-client.js';

export interface GatewayDeps {
  logger: Logger;
  metrics: Metrics;
  /** the policy in force; by default loaded from config.policy.dir */
  policies?: PolicyStore;
  strikes?: StrikeSink;
  /** per-account limits; by default from config.limits (Redis, or in memory) */
  limiter?: Limiter;
  bulk?: BulkPort;
  /** virus scanner; by default clamd from config.clamd (none with `clamd: none`) */
  scanner?: ScannerPort;
  quarantine?: QuarantineStore;
  /** the lifecycle API; by default from config.lifecycle (none when adapter is none) */
  lifecycle?: LifecycleApi;
  upstream?: UpstreamProvider;
  /** threads for second looks at messages (see inspect/pool.ts); by default config.inspection.threads */
  inspectionPool?: InspectionPool;
  clock?: Clock;
  pipeline?: Readonly<Record<Phase, readonly Check[]>>;
}

interface Listener {
  name: string;
  config: ListenerConfig;
  server: GatewaySmtpServer;
  address?: AddressInfo;
}

const systemClock: Clock = { now: () => Date.now() };

export class Gateway {
  private readonly listeners: Listener[] = [];
  private readonly sessions = new Map<string, SessionState>();
  /** errors a listener reported, so that one reported twice is said and counted once */
  private readonly listenerErrorsSeen = new WeakSet<Error>();
  private readonly perIp = new Map<string, number>();
  private readonly trusted = new Map<string, AddressList>();
  private readonly upstream: UpstreamProvider;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly metrics: Metrics;
  private readonly pipeline: Readonly<Record<Phase, readonly Check[]>>;
  private readonly checkDeps: CheckDeps;
  readonly policies: PolicyStore;
  readonly limiter: Limiter;
  private readonly redis: RedisClient | undefined;
  private readonly strikes: StrikeSink;
  private readonly scanner: ScannerPort | undefined;
  private readonly inspectionPool: InspectionPool;
  readonly quarantine: QuarantineStore;
  readonly enforcer: Enforcer;
  readonly outbox: Outbox;
  readonly audit: AuditLog;
  private purgeTimer: NodeJS.Timeout | undefined;
  private healthTimer: NodeJS.Timeout | undefined;
  /** the last upstream readiness probe failed: the health timer probes it until it answers */
  private upstreamUnready = false;
  private healthProbes: Record<string, ReadinessProbe> | undefined;
  private healthTicks = 0;
  private tls: TlsMaterial | undefined;
  private draining = false;
  private stopping: Promise<void> | undefined;

  constructor(
    readonly config: Readonly<Config>,
    deps: GatewayDeps,
  ) {
    this.log = deps.logger;
    this.metrics = deps.metrics;
    this.clock = deps.clock ?? systemClock;
    this.pipeline = deps.pipeline ?? PIPELINE;
    this.upstream =
      deps.upstream ??
      new PooledUpstreamProvider(endpointsFrom(config.upstream, config.hostname), {
        poolSize: config.upstream.pool.size,
        idleMs: config.upstream.pool.idle,
        xclient: config.upstream.xclient,
      });
    this.policies = deps.policies ?? new PolicyStore(config.policy.dir, this.log, this.metrics, undefined, (p) => configPolicyWarnings(config, p));
    if (deps.limiter) this.limiter = deps.limiter;
    else {
      const { redis, deadline, on_redis_failure } = config.limits;
      this.redis = redis ? createRedis(redis, deadline, this.log, this.metrics) : undefined;
      this.limiter = new Limiter({ redis: this.redis, keyPrefix: redis?.key_prefix ?? 'douane', onFailure: on_redis_failure, deadlineMs: deadline, metrics: this.metrics, log: this.log });
    }
    this.securePrivateDirs();
    this.audit = new AuditLog(join(config.state_dir, 'audit.log'));
    const lifecycle = deps.lifecycle ?? createLifecycle(config, this.metrics);
    const enforcementState = this.redis
      ? new RedisEnforcementState(this.redis, config.limits.redis?.key_prefix ?? 'douane')
      : new FileEnforcementState(join(config.state_dir, 'enforcement.json'), Date.now, (detail) => this.log.error({ event: 'enforcement_state_unreadable', detail }, 'enforcement state could not be read; starting without it (the audit log has every suspension)'));
    const e = config.enforcement;
    let enforcer: Enforcer | undefined;
    const notifySmtp = noticeSmtp(config);
    this.outbox = new Outbox({
      dir: join(config.state_dir, 'outbox'),
      handlers: {
        lifecycle: (job) => enforcer!.lifecycleHandler()(job),
        notify: mailHandler({ from: e.notify.from ?? `douane@${config.hostname}`, smtp: notifySmtp }, this.metrics),
        webhook: e.webhook ? webhookHandler(e.webhook, this.metrics) : async () => undefined,
        strike: (job) => enforcer!.strikeHandler()(job),
      },
      minDelayMs: e.outbox.retry_min,
      maxDelayMs: e.outbox.retry_max,
      giveUpAfterMs: e.outbox.give_up_after,
      metrics: this.metrics,
      log: this.log,
      onFailed: (job, err) =>
        void this.audit
          .append({ action: 'outbox_failed', actor: 'douane', job: job.id, kind: job.kind, attempts: job.attempts, error: err.message, payload: job.kind === 'lifecycle' ? job.payload : undefined })
          .catch((e: Error) => this.log.error({ event: 'audit_failed', action: 'outbox_failed', job: job.id, err: e.message }, 'could not write to the audit trail')),
    });
    enforcer = new Enforcer({
      state: enforcementState,
      outbox: this.outbox,
      audit: this.audit,
      policy: () => this.policies.current,
      settings: { dry_run: e.dry_run, approval: e.approval, breaker_max_per_hour: e.breaker_max_per_hour, contact: e.contact, provider: e.provider, notify_holder: e.notify.holder, abuse_team: e.notify.abuse_team, webhook: Boolean(e.webhook) },
      metrics: this.metrics,
      log: this.log,
      lifecycle,
      deadlineMs: Math.max(config.limits.deadline, 2000),
      stateDeadlineMs: config.limits.deadline,
      // Shared in Redis, the state may not answer when this instance starts (without Redis it is a file).
      knownFile: config.limits.redis ? join(config.state_dir, 'known-suspensions.json') : undefined,
    });
    this.enforcer = enforcer;
    this.strikes = deps.strikes ?? enforcer;
    this.inspectionPool = deps.inspectionPool ?? new InspectionPool(config.inspection.threads);
    this.inspectionPool.onThreadFailure((err, messages) => {
      this.metrics.inspectionThreadFailures.inc();
      this.log.error({ event: 'inspection_thread_failed', err: err.message, messages }, 'an inspection thread stopped; the message it was on was tempfailed');
    });
    this.scanner = deps.scanner ?? (config.clamd !== 'none' ? new ClamdScanner({ hosts: config.clamd.hosts, timeoutMs: config.clamd.timeout, metrics: this.metrics, log: this.log }) : undefined);
    this.quarantine = deps.quarantine ?? new LocalQuarantine(join(config.state_dir, 'quarantine'));
    if (!this.scanner) this.log.warn({ event: 'scanning_disabled' }, 'clamd: none in the configuration: messages are not scanned for viruses');
    const zimbraUrl = config.lifecycle.adapter === 'zimbra' ? config.lifecycle.zimbra?.url : undefined;
    if (zimbraUrl?.startsWith('http://') && !/^http:\/\/(127\.|localhost[:/]|\[::1\])/.test(zimbraUrl)) {
      this.log.warn({ event: 'lifecycle_plain_http', url: zimbraUrl }, 'the Zimbra admin URL is plain http: the admin password and token cross the network in clear; use https (port 7071)');
    }
    this.checkDeps = {
      clock: this.clock,
      connectionsFrom: (ip) => this.perIp.get(ip) ?? 0,
      trustedNetwork: (listener, ip) => this.trusted.get(listener)?.has(ip) ?? false,
      policy: () => this.policies.current,
      strikes: this.strikes,
      metrics: this.metrics,
      limiter: this.limiter,
      accounts: this.enforcer,
      bulk: deps.bulk ?? new BulkCounter({ redis: this.redis, keyPrefix: config.limits.redis?.key_prefix ?? 'douane', deadlineMs: config.limits.deadline, metrics: this.metrics, log: this.log, onFailure: config.limits.on_redis_failure }),
    };
    const stale = Spool.prepare(config.spool.dir, config.smtp.session_deadline);
    if (stale) this.log.warn({ event: 'spool_cleaned', removed: stale, dir: config.spool.dir }, `removed ${stale} spool files left by a previous run`);
    this.tls = loadTlsMaterial(config);
    if (this.tls?.selfSigned) {
      this.log.warn({ event: 'insecure_dev_tls' }, 'TLS listeners use a throwaway self-signed certificate (tls.insecure_dev): for testing only');
    }
    if (this.tls) this.noteCertificate(this.tls);
    for (const [name, l] of Object.entries(config.listeners)) {
      if (l.allow) this.trusted.set(name, new AddressList(l.allow));
      this.listeners.push({ name, config: l, server: this.createServer(name, l) });
    }
  }

  /**
   * The quarantine and the outbox (evidence, pending suspensions), private or no start. The state and
   * spool directories themselves are checked with the configuration, where their key can be named.
   */
  private securePrivateDirs(): void {
    for (const dir of [join(this.config.state_dir, 'quarantine'), join(this.config.state_dir, 'outbox')]) {
      const { was } = securePrivateDir(dir);
      if (was !== undefined) {
        this.log.warn({ event: 'private_dir_tightened', dir, mode: was.toString(8).padStart(4, '0') }, `${dir} was open to other users: made 0700`);
      }
    }
  }

  /**
   * Reads tls.cert and tls.key again (SIGHUP, after a renewal): new sessions get the new certificate,
   * sessions already in TLS keep theirs. A pair that cannot be read or does not match is refused, and
   * the one in use stays. Nothing to do without configured files (insecure_dev, or no TLS).
   */
  reloadTls(): boolean {
    if (!this.tls || this.tls.selfSigned) return false;
    try {
      const material = reloadTlsMaterial(this.config);
      // Read before it is put in use: a certificate whose dates cannot be read is refused with the rest.
      const dates = certificateDates(material.cert);
      for (const l of this.listeners) l.server.updateSecureContext({ key: material.key, cert: material.cert });
      this.tls = material;
      const { subject, validTo } = this.noteCertificate(material, dates);
      this.log.info({ event: 'tls_reloaded', subject, valid_to: validTo.toISOString() }, `TLS certificate reloaded (${subject}, valid to ${validTo.toISOString()})`);
      return true;
    } catch (err) {
      this.log.error({ event: 'tls_reload_failed', err: (err as Error).message }, `TLS certificate not reloaded, the one in use stays: ${(err as Error).message}`);
      return false;
    }
  }

  /** The certificate in use, for the expiry alert, and said in the log when it has expired or soon will. */
  private noteCertificate(material: TlsMaterial, dates = certificateDates(material.cert)) {
    this.metrics.tlsCertificateExpiry(dates.validTo);
    const warning = material.selfSigned ? undefined : certificateWarning(dates, this.clock.now());
    if (warning) this.log.warn({ event: warning.event, subject: dates.subject, valid_to: dates.validTo.toISOString() }, warning.message);
    return dates;
  }

  // ---------------------------------------------------------------- lifecycle

  async start(): Promise<void> {
    if (this.redis && !(await redisReady(this.redis, 3000))) {
      this.log.warn({ event: 'redis_not_ready' }, 'Redis is not reachable at start; limits use the in-process insurance until it is');
    }
    await this.learnUpstream();
    await Promise.all(
      this.listeners.map(
        (l) =>
          new Promise<void>((resolve, reject) => {
            // The key to change, with the system's reason ("listeners.submission: 0.0.0.0:587 is in use").
            l.server.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`listeners.${l.name}: cannot listen on ${l.config.address}:${l.config.port}: ${err.code === 'EADDRINUSE' ? 'the address is already in use' : err.message}`)));
            l.server.listen(l.config.port, l.config.address, () => {
              l.server.off('error', reject);
              l.address = l.server.server.address() as AddressInfo;
              l.server.on('error', (err: Error) => this.onListenerError(l.name, err));
              // At 0 from the start, for a rate to be drawn and alerted on before the first failure.
              if (l.config.mode !== 'trusted') this.metrics.tlsHandshakeFailures.labels(l.name).inc(0);
              resolve();
            });
          }),
      ),
    );
    await this.outbox.start();
    await this.enforcer.refreshGauge();
    await this.enforcer.breaker().catch(() => undefined);
    await this.purgeQuarantine();
    this.purgeTimer = setInterval(() => void this.purgeQuarantine(), 3_600_000);
    this.purgeTimer.unref();
    this.healthProbes = this.readinessProbes();
    this.refreshHealth();
    this.healthTimer = setInterval(() => this.refreshHealth(), 10_000);
    this.healthTimer.unref();
    for (const l of this.listeners) {
      this.log.info({ event: 'listening', listener: l.name, mode: l.config.mode, address: l.address?.address, port: l.address?.port }, `listening on ${l.address?.address}:${l.address?.port} (${l.config.mode})`);
    }
  }

  /**
   * A socket or TLS error on a listener, before or outside a session: with the client and, for a failed
   * handshake, the TLS version it asked for and why, so that the customers still on TLS 1.0 or 1.1 (never
   * offered) or sending plain text to 465 can be found.
   */
  private onListenerError(listener: string, err: Error): void {
    // A handshake that fails after STARTTLS reaches here twice, with the same error: smtp-server listens
    // to both of the TLS socket's error events. Said and counted once.
    if (this.listenerErrorsSeen.has(err)) return;
    this.listenerErrorsSeen.add(err);
    const e = err as Error & { code?: string; remoteAddress?: string; meta?: { remoteAddress?: string; tlsProtocol?: string | null; message?: string } };
    const tlsFailure = /^(ERR_SSL_|ERR_TLS_|TLSError$)/.test(e.code ?? '') || e.meta?.tlsProtocol !== undefined;
    if (tlsFailure) this.metrics.tlsHandshakeFailures.labels(listener).inc();
    this.log.warn(
      {
        event: tlsFailure ? 'tls_handshake_failed' : 'listener_error',
        listener,
        client: e.remoteAddress ?? e.meta?.remoteAddress,
        code: e.code,
        ...(e.meta?.tlsProtocol ? { tls: e.meta.tlsProtocol } : {}),
        err: e.meta?.message ?? e.message,
      },
      tlsFailure ? 'TLS handshake failed' : 'listener error',
    );
  }

  /** Keeps the availability gauges (clamd, Redis, the upstream once found down) and the breaker's current between requests. */
  refreshHealth(): void {
    // Not the upstream while it was last seen answering: probing it opens an SMTP session at the MTA, and
    // /readyz does that when asked. Once a probe found it down, it is probed here until it answers, so
    // that its gauge (and the critical alert on it) does not wait for the next /readyz to clear.
    for (const [name, probe] of Object.entries(this.healthProbes ?? {})) {
      if (name === 'upstream' && !this.upstreamUnready) continue;
      void probe().then((r) => this.metrics.readiness.labels(name).set(r.ok ? 1 : 0), () => this.metrics.readiness.labels(name).set(0));
    }
    void this.enforcer.breaker().catch(() => undefined);
    void this.enforcer.refreshGauge();
    this.outbox.refreshGauges();
    // The quarantine changes under other processes too (douane quarantine release, delete): once a minute.
    if (++this.healthTicks % 6 === 0) void this.updateQuarantineGauges().catch(() => undefined);
  }

  /**
   * What the upstream offers on each port the listeners use, learned before the first client asks (a
   * client is offered DSN only while the upstream offers it). Waited for a few seconds at most: an
   * upstream that is down or slow is learned from the first session that reaches it.
   */
  private async learnUpstream(): Promise<void> {
    const ports = [...new Set(this.listeners.map((l): UpstreamPort => (l.config.mode === 'trusted' ? 'trusted' : 'submission')))];
    const learned = Promise.all(
      ports.map((port) =>
        this.upstream.learn(port).then(
          () => {
            // Without XCLIENT the upstream sees every trusted client as Douane: its own checks of the
            // client's address (and its logs) are then Douane's. Relaying goes on, as before it was asked.
            if (port === 'trusted' && this.config.upstream.xclient && !this.upstream.offers('trusted', 'XCLIENT')) {
              this.log.warn({ event: 'xclient_not_offered', port }, 'upstream.xclient is set but the upstream does not offer XCLIENT to Douane (Postfix: smtpd_authorized_xclient_hosts): it sees Douane\'s address for every client of the trusted listener');
            }
            return true;
          },
          (err: Error) => {
            this.log.warn({ event: 'upstream_not_ready', port, err: err.message }, 'the upstream did not answer at start; what it offers is learned from the first session that reaches it');
            return false;
          },
        ),
      ),
    ).then((answered) => {
      // The upstream's readiness gauge from the start: nothing else sets it while no one asks /readyz.
      this.metrics.readiness.labels('upstream').set(answered.every(Boolean) ? 1 : 0);
      if (!answered.every(Boolean)) this.upstreamUnready = true;
    });
    await Promise.race([learned, new Promise((resolve) => setTimeout(resolve, 3000).unref())]);
  }

  /** Readiness: every listener accepting, and the upstream answering with a usable SMTP session. */
  readinessProbes(): Record<string, ReadinessProbe> {
    return {
      listeners: async () => {
        const down = this.listeners.filter((l) => !l.address || !l.server.server.listening).map((l) => l.name);
        if (this.draining) return { ok: false, detail: 'draining for shutdown' };
        return down.length ? { ok: false, detail: `not listening: ${down.join(', ')}` } : { ok: true };
      },
      ...(this.redis
        ? {
            redis: cachedProbe(async () => {
              const r = await redisPing(this.redis!, this.metrics);
              // With the insurance (the default) mail still flows while Redis is down: ready, but say so.
              if (!r.ok && this.config.limits.on_redis_failure === 'insurance') return { ok: true, detail: `insurance: ${r.detail}` };
              return r;
            }, 2000),
          }
        : {}),
      ...(this.scanner instanceof ClamdScanner
        ? {
            clamd: cachedProbe(async () => {
              const r = await (this.scanner as ClamdScanner).ping();
              // With scanning.fail_open the gateway takes mail even without clamd: ready, but say so.
              if (!r.ok && this.policies.current.doc.scanning.fail_open) return { ok: true, detail: `fail-open: ${r.detail}` };
              return r;
            }, 2000),
          }
        : {}),
      upstream: cachedProbe(async () => {
        try {
          const client = await this.upstream.forAuth({ address: '127.0.0.1', port: 0, secure: false });
          await client.quit();
        } catch (err) {
          this.upstreamUnready = true;
          throw err;
        }
        this.upstreamUnready = false;
        return { ok: true };
      }, 5000),
    };
  }

  /** Port a listener is bound to (useful with port 0). */
  port(listener: string): number {
    const l = this.listeners.find((x) => x.name === listener);
    if (!l?.address) throw new Error(`listener ${listener} is not listening`);
    return l.address.port;
  }

  get activeSessions(): number {
    return this.sessions.size;
  }

  /**
   * Graceful stop: stop accepting, end idle sessions with 421, let open transactions finish until the
   * drain deadline, then 421 the rest. A message being relayed at the deadline is aborted upstream
   * before its final dot, so it is neither half-delivered nor acknowledged.
   */
  stop(drainMs = this.config.shutdown.drain_timeout): Promise<void> {
    this.stopping ??= this.drainAndClose(drainMs);
    return this.stopping;
  }

  private async drainAndClose(drainMs: number): Promise<void> {
    this.draining = true;
    clearInterval(this.purgeTimer);
    clearInterval(this.healthTimer);
    this.log.info({ event: 'draining', sessions: this.sessions.size, drain_ms: drainMs }, 'stopping: draining open transactions');
    // Accepting stops at once; `closed` waits for every connection to end.
    const closed = Promise.all(this.listeners.map((l) => l.server.stopAccepting()));
    const deadline = this.clock.now() + drainMs;
    for (;;) {
      for (const conn of this.connections()) {
        const state = this.sessions.get(conn.session.id);
        if (!conn.busy && !(state?.tx && !state.tx.done)) conn.refuse('session.shutting_down', 'connect');
      }
      if (this.connections().length === 0 || this.clock.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    // A message whose final dot is with the upstream may be queued there already: cutting the connection
    // would tell its client to send it again (a duplicate). Its answer is awaited and written to the client
    // (its handler is done); the relay gives up on the upstream after its data timeout, and so does this.
    const answerBy = this.clock.now() + this.config.upstream.timeouts.data;
    const answering = (conn: GatewayConnection) => conn.busy && Boolean(this.sessions.get(conn.session.id)?.tx?.lastBytesSent);
    while (this.connections().some(answering) && this.clock.now() < answerBy) await new Promise((r) => setTimeout(r, 25));
    for (const conn of this.connections()) {
      this.sessions.get(conn.session.id)?.upstream?.destroy();
      conn.refuse('session.shutting_down', 'connect');
    }
    await this.upstream.close();
    await this.outbox.stop();
    this.scanner?.close?.();
    await this.inspectionPool.close();
    this.redis?.disconnect();
    // Clients that do not close their side after our 421 are cut off after a short grace period.
    const closeBy = Date.now() + 2000;
    while (this.connections().length && Date.now() < closeBy) await new Promise((r) => setTimeout(r, 10));
    for (const conn of this.connections()) conn._socket.destroy();
    for (const l of this.listeners) for (const conn of l.server.connections) l.server.connections.delete(conn);
    await closed;
    this.log.info({ event: 'stopped' }, 'stopped');
  }

  private connections(): GatewayConnection[] {
    return this.listeners.flatMap((l) => [...l.server.connections] as GatewayConnection[]);
  }

  // ---------------------------------------------------------------- smtp-server wiring

  private createServer(name: string, l: ListenerConfig): GatewaySmtpServer {
    const smtp = this.config.smtp;
    const trusted = l.mode === 'trusted';
    const proxies = new Set((l.proxy_protocol_from ?? []).map(canonicalIp));
    const hooks: ConnectionHooks = {
      sessionReference: (session) => this.sessionReference(session),
      takeSuccessText: (session) => {
        const state = this.sessions.get(session.id);
        const text = state?.pendingSuccessText;
        if (state) state.pendingSuccessText = undefined;
        return text;
      },
      draining: () => this.draining,
      onProtocolRefusal: (session, reason, reply, client) => this.onProtocolRefusal(name, session, reason, reply, client),
      onProtocolError: (session, reply) => this.onProtocolError(session, reply),
      onTransactionReset: (session) => this.onTransactionReset(session),
      sessionDeadline: smtp.session_deadline,
      upstreamOffers: (extension) => this.upstream.offers(trusted ? 'trusted' : 'submission', extension),
      maxSocketsPerIp: smtp.max_connections_per_ip,
      isProxy: (ip) => proxies.has(canonicalIp(ip)),
      onProxyRefused: (ip, why) => this.log.warn({ event: 'proxy_header_refused', listener: name, proxy: ip, err: why }, `connection from the load balancer ${ip} closed: ${why} (Douane reads PROXY protocol version 1: HAProxy's send-proxy, not send-proxy-v2)`),
      onSocketRefused: (ip) => {
        this.metrics.refusals.labels('connect', 'connection.too_many_from_ip').inc();
        this.log.info({ event: 'refusal', listener: name, client: ip, reason: 'connection.too_many_from_ip', phase: 'connect', note: 'before the TLS handshake' }, 'connection.too_many_from_ip');
      },
    };
    // sendmail's old debugging commands, which smtp-server answers with jokes: unknown here, as in Postfix.
    const disabled = trusted ? ['AUTH', 'WIZ', 'SHELL', 'KILL'] : ['WIZ', 'SHELL', 'KILL'];
    if (!this.tls) disabled.push('STARTTLS');
    return new GatewaySmtpServer(
      {
        name: this.config.hostname,
        secure: l.mode === 'tls',
        key: this.tls?.key,
        cert: this.tls?.cert,
        minVersion: this.config.tls.min_version,
        authMethods: ['PLAIN', 'LOGIN'],
        authOptional: trusted,
        disabledCommands: disabled,
        size: smtp.max_message_size,
        hideENHANCEDSTATUSCODES: false,
        // Offered (and its parameters checked by smtp-server) while the upstream offers it: see upstreamOffers.
        hideDSN: false,
        hideREQUIRETLS: true,
        disableReverseLookup: true,
        // smtp-server reads the header (v1) from these addresses only, and takes the client's address from it.
        useProxy: proxies.size ? [...proxies] : false,
        maxClients: smtp.max_connections,
        socketTimeout: smtp.idle_timeout,
        closeTimeout: this.config.shutdown.drain_timeout,
        maxCommandLength: smtp.max_line_length,
        maxAllowedUnauthenticatedCommands: trusted ? false : 10,
        logger: false,
        onConnect: (session, cb) => this.guard('connect', session, cb, () => this.onConnect(name, l, session)),
        onAuth: (auth, session, cb) =>
          this.guard('auth', session, (err, user) => (err ? cb(err) : cb(null, { user })), () => this.onAuth(auth, session)),
        onMailFrom: (address, session, cb) => this.guard('mail', session, cb, () => this.onMailFrom(address, session)),
        onRcptTo: (address, session, cb) => this.guard('rcpt', session, cb, () => this.onRcptTo(address, session)),
        onData: (stream, session, cb) =>
          this.guard('data', session, (err, text) => (err ? cb(err) : cb(null, text as string)), () => this.onData(stream, session)),
        onClose: (session) => this.onClose(session),
      },
      hooks,
    );
  }

  /**
   * Runs a handler, times it, and turns anything unexpected into a 451 with a reference — a handler
   * never throws into smtp-server and never leaves the client without a reply.
   */
  private guard<T>(phase: Phase, session: SMTPServerSession, cb: (err: Error | null, value?: T) => void, fn: () => Promise<T>): void {
    const started = performance.now();
    // DATA's answer is timed from the final dot: before it, the time is the client's, sending its message.
    // The transaction is held from here: a client that leaves after its dot has no session state by the end.
    const tx = phase === 'data' ? this.sessions.get(session.id)?.tx : undefined;
    const since = () => tx?.receivedAt ?? started;
    fn().then(
      (value) => {
        this.metrics.phaseDuration.labels(phase).observe((performance.now() - since()) / 1000);
        this.metrics.replies.labels(phase, '2xx').inc();
        cb(null, value);
      },
      (err: unknown) => {
        this.metrics.phaseDuration.labels(phase).observe((performance.now() - since()) / 1000);
        if (err instanceof ReplyError || (err instanceof Error && typeof (err as ReplyError).responseCode === 'number')) {
          this.metrics.replies.labels(phase, replyClass((err as ReplyError).responseCode)).inc();
          const ending = this.sessions.get(session.id);
          if (ending && err instanceof ReplyError && err.reply.close && err.reason) ending.endedBy ??= err.reason;
          cb(err as Error);
          return;
        }
        const reference = this.sessions.get(session.id)?.tx?.reference ?? this.sessionReference(session);
        if ((err as NodeJS.ErrnoException)?.code === 'ECONNECTION') {
          // smtp-server ends the DATA stream so when the client disconnects mid-message: the client's
          // doing, already logged as an abandoned transaction, and nobody is left to answer.
          this.log.info({ event: 'client_gone', phase, session: session.id, ref: reference }, 'client went away in the middle of the message');
          cb(err as Error);
          return;
        }
        this.log.error({ event: 'internal_error', phase, session: session.id, ref: reference, err: (err as Error)?.stack ?? String(err) }, 'handler failed');
        const refusal = this.refusal({ action: 'tempfail', reason: 'internal.error' }, phase, reference);
        this.metrics.replies.labels(phase, replyClass(refusal.responseCode)).inc();
        // A failed MAIL or DATA ends the transaction: counted and logged as what the client was told, not
        // later as abandoned. A failed RCPT ends only that recipient; the transaction goes on.
        const state = this.sessions.get(session.id);
        if (state && (phase === 'mail' || phase === 'data')) this.finishTransaction(state, { action: 'tempfail', reason: 'internal.error', reply: refusal.wire, note: `handler failed: ${(err as Error)?.message ?? String(err)}` });
        cb(refusal);
      },
    );
  }

  private sessionReference(session: SMTPServerSession): string {
    const state = this.sessions.get(session.id);
    if (state) return state.reference;
    const s = session as SMTPServerSession & { douaneRef?: string };
    return (s.douaneRef ??= newReference());
  }

  private context(phase: Phase, state: SessionState, extra: Partial<CheckContext> = {}): CheckContext {
    return { phase, config: this.config, deps: this.checkDeps, session: state, tx: state.tx, ...extra };
  }

  private async check(phase: Phase, state: SessionState, extra: Partial<CheckContext> = {}): Promise<PhaseOutcome> {
    const outcome = await runPhase(phase, this.context(phase, state, extra), this.pipeline[phase]);
    for (const r of outcome.results) this.metrics.checkResults.labels(r.check, r.result).inc();
    if (state.tx) {
      state.tx.results.push(...outcome.results);
      state.tx.tags.push(...outcome.tags);
    }
    return outcome;
  }

  private refusal(verdict: Verdict, phase: Phase, reference: string): ReplyError {
    // Whom to write to is the same for every refusal: rules' sentences may name it too.
    const reply = replyFor({ ...verdict, detail: { contact: this.config.enforcement.contact, ...verdict.detail } }, phase, reference);
    this.metrics.refusals.labels(phase, verdict.reason ?? 'none').inc();
    return new ReplyError(reply, verdict.reason);
  }

  // ---------------------------------------------------------------- handlers

  private async onConnect(name: string, l: ListenerConfig, session: SMTPServerSession): Promise<void> {
    const ip = session.remoteAddress;
    const state: SessionState = {
      id: session.id,
      reference: this.sessionReference(session),
      listener: { name, mode: l.mode },
      remoteAddress: ip,
      startedAt: this.clock.now(),
      authFailures: 0,
      transactions: 0,
      counted: true,
    };
    this.sessions.set(session.id, state);
    this.perIp.set(ip, (this.perIp.get(ip) ?? 0) + 1);
    this.metrics.sessionsActive.labels(name).inc();
    const outcome = await this.check('connect', state);
    if (isRefusal(outcome.verdict)) {
      state.refused = outcome.verdict.reason;
      const refusal = this.refusal(outcome.verdict, 'connect', state.reference);
      // The reference the client reads, where support looks for it: no transaction line will carry it.
      this.log.info({ event: 'refusal', phase: 'connect', session: state.id, ref: state.reference, listener: name, client: ip, reason: outcome.verdict.reason, reply: `${refusal.reply.code} ${refusal.reply.enhanced}` }, outcome.verdict.reason ?? 'refused');
      throw refusal;
    }
  }

  /** After the upstream's 235: the session's account, its count of open sessions. */
  private async loggedIn(state: SessionState, username: string, attempt: AuthAttempt | undefined): Promise<string> {
    // Failed logins were counted under the account the login was known to be: that counter is cleared.
    await attempt?.settle('succeeded');
    // The session's cleanup has run (its upstream connection says QUIT): nothing may be opened for it now.
    // A failure, below, still counts: a client that leaves at once must not escape the brute-force limits.
    if (state.closed) throw clientGone('while its credentials were checked');
    const login = comparableAddress(username);
    this.metrics.auth.labels('success').inc();
    state.account = await this.enforcer.canonical(login);
    this.logAuth(state, username, 'success');
    if (state.closed) throw clientGone('while its account was looked up');
    state.sessionExpiresAt = this.clock.now() + this.config.smtp.session_deadline + 60_000;
    await this.limiter.sessionOpened(state.account, state.id, state.sessionExpiresAt);
    if (state.closed) {
      // It left while the session was being counted, after its cleanup looked: give the count back here.
      void this.limiter.sessionClosed(state.account, state.id);
      throw clientGone('while its session was being counted');
    }
    state.sessionCounted = true;
    return username;
  }

  private async onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession): Promise<string> {
    const state = this.requireState(session);
    const username = auth.username ?? '';
    state.authAttempt = undefined;
    const outcome = await this.check('auth', state, { authUser: username });
    // Counted as a failure by the brute-force check until the upstream's answer says otherwise.
    const attempt = state.authAttempt as AuthAttempt | undefined;
    state.authAttempt = undefined;
    if (isRefusal(outcome.verdict)) {
      void attempt?.settle('not_tried');
      // Brute force held off, or logins not checkable (Redis): the second is an outage, alerted as one.
      const result = outcome.verdict.reason === 'auth.blocked' ? 'blocked' : outcome.verdict.reason === 'auth.too_many_at_once' ? 'too_many_at_once' : outcome.verdict.reason === 'auth.limits_unavailable' ? 'limits_unavailable' : 'error';
      this.metrics.auth.labels(result).inc();
      this.logAuth(state, username, result, { reason: outcome.verdict.reason, evidence: outcome.results.at(-1)?.evidence });
      throw this.refusal(outcome.verdict, 'auth', state.reference);
    }

    let upstream = state.upstream;
    let reply: SmtpReply;
    try {
      if (!upstream || !upstream.usable) {
        upstream = await this.upstream.forAuth(this.identity(session));
        if (state.closed) {
          void upstream.quit();
          throw clientGone('before its credentials were checked');
        }
        state.upstream = upstream;
      }
      const credentials = asSent(auth, session);
      reply = await upstream.auth(credentials.username, credentials.password, credentials.authzid);
    } catch (err) {
      void attempt?.settle('not_tried');
      if (state.closed) throw clientGone('before its credentials were checked');
      this.upstreamFailed(err, 'auth', state.reference);
      this.metrics.auth.labels('upstream_error').inc();
      this.logAuth(state, username, 'upstream_error', { reason: 'auth.upstream_unavailable', detail: (err as Error).message });
      throw this.refusal({ action: 'tempfail', reason: 'auth.upstream_unavailable' }, 'auth', state.reference);
    }
    this.metrics.upstreamReplies.labels('auth', replyClass(reply.code)).inc();
    if (reply.code === 235) {
      try {
        return await this.loggedIn(state, username, attempt);
      } catch (err) {
        // The upstream connection is logged in, for a client told it is not: its next AUTH would get the
        // upstream's 503 "already authenticated". It starts again on a new connection.
        if (state.upstream === upstream) state.upstream = undefined;
        if (!state.sessionCounted) state.account = undefined;
        void upstream.quit();
        throw err;
      }
    }
    if (reply.code === 535 || reply.enhanced === '5.7.8') {
      state.authFailures++;
      this.enforcer.learn(comparableAddress(username));
      const counted = (await attempt?.settle('failed')) ?? { accountBlockedNow: false, failures: 0 };
      if (counted.accountBlockedNow) await this.bruteForceStrike(state, username, counted.failures);
      const tooMany = state.authFailures >= this.config.smtp.max_auth_failures;
      this.metrics.auth.labels(tooMany ? 'too_many_failures' : 'failure').inc();
      this.logAuth(state, username, tooMany ? 'too_many_failures' : 'failure', { reason: tooMany ? 'auth.too_many_failures' : 'auth.failed', detail: formatReply(reply) });
      throw this.refusal(
        tooMany ? { action: 'tempfail', reason: 'auth.too_many_failures' } : { action: 'reject', reason: 'auth.failed' },
        'auth',
        state.reference,
      );
    }
    // Neither a success nor a refusal of the credentials: the attempt does not count.
    void attempt?.settle('not_tried');
    if (reply.code >= 400 && reply.code < 500) {
      this.metrics.auth.labels('upstream_tempfail').inc();
      this.logAuth(state, username, 'upstream_tempfail', { reason: 'auth.upstream_unavailable', detail: formatReply(reply) });
      throw this.refusal({ action: 'tempfail', reason: 'auth.upstream_unavailable', evidence: { upstream: formatReply(reply) } }, 'auth', state.reference);
    }
    this.metrics.auth.labels('failure').inc();
    this.logAuth(state, username, 'failure', { detail: formatReply(reply) });
    throw passThrough(reply, state.reference);
  }

  private async onMailFrom(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    const state = this.requireState(session);
    if (state.tx && !state.tx.done) this.finishTransaction(state, { action: 'abandoned' });
    // One account however its domain is written (xn-- or Unicode), or whichever of its addresses a webmail
    // sends as (an alias is the account the lifecycle API names): limits, strikes and suspensions are its
    // own. Known before the transaction begins, so that a client gone meanwhile leaves nothing open.
    if (state.listener.mode === 'trusted') {
      const sender = comparableAddress(address.address);
      state.account = sender ? await this.enforcer.canonical(sender) : '<>';
      if (state.closed) throw clientGone('while its sender was looked up');
    }
    const args = address.args || {};
    const tx: Transaction = {
      reference: newReference(),
      startedAt: this.clock.now(),
      mailFrom: address.address,
      params: paramsAsWritten(address),
      recipients: [],
      recipientGrants: [],
      results: [],
      tags: [],
      would: [],
      timings: {},
      done: false,
      policy: this.policies.current,
    };
    if (typeof args.SIZE === 'string') tx.declaredSize = Number(args.SIZE);
    state.tx = tx;
    state.transactions++;
    const started = performance.now();

    // The counters start now, in the same Redis round trip as the account's state.
    preparePhase('mail', this.context('mail', state), this.pipeline.mail);
    const outcome = await this.check('mail', state);
    if (isRefusal(outcome.verdict)) {
      const err = this.refusal(outcome.verdict, 'mail', tx.reference);
      this.finishTransaction(state, outcomeOf(outcome.verdict, err));
      throw err;
    }

    let upstream: SmtpClient;
    try {
      upstream = await this.upstreamFor(state, session);
    } catch (err) {
      const refusal = err instanceof ReplyError ? err : this.upstreamRefusal(err, 'mail', tx.reference);
      this.finishTransaction(state, { action: 'tempfail', reason: refusal.reason, reply: refusal.wire });
      throw refusal;
    }
    let reply: SmtpReply;
    try {
      reply = await upstream.mail(address.address, this.relayedParams(tx, 'mail', tx.params, upstream));
    } catch (err) {
      const refusal = this.upstreamRefusal(err, 'mail', tx.reference);
      this.finishTransaction(state, { action: 'tempfail', reason: 'upstream.unavailable', reply: refusal.wire });
      throw refusal;
    }
    tx.timings.mail = elapsed(started);
    this.metrics.upstreamReplies.labels('mail', replyClass(reply.code)).inc();
    if (reply.code >= 300 && reply.code < 400) {
      // No answer MAIL FROM can have: what the upstream does next is unknown, so the connection goes.
      upstream.destroy();
      const refusal = this.upstreamRefusal(new UpstreamError('protocol', `the upstream answered MAIL FROM with ${formatReply(reply)}`, reply), 'mail', tx.reference);
      this.finishTransaction(state, { action: 'tempfail', reason: 'upstream.unavailable', reply: refusal.wire });
      throw refusal;
    }
    if (reply.code < 200 || reply.code >= 300) {
      const err = passThrough(reply, tx.reference);
      this.finishTransaction(state, { action: reply.code < 500 ? 'tempfail' : 'reject', reply: err.wire });
      throw err;
    }
    state.pendingSuccessText = withEnhanced(reply, '2.1.0');
  }

  private async onRcptTo(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    const state = this.requireState(session);
    const tx = state.tx;
    if (!tx || !state.upstream) throw new Error('RCPT without an open transaction');
    // A recipient already accepted, in another spelling of its domain ("xn--" or Unicode, its case): relayed
    // once, counted once. The upstream would deliver it twice. A local part in another case is another
    // mailbox, as far as anyone but its host can tell (mailboxKey).
    const key = mailboxKey(address.address);
    tx.acceptedRecipients ??= new Set();
    // Every recipient is kept for the transaction's log line, the refused ones too: without a bound, a
    // client sending RCPTs for ever would grow the process's memory and that line without limit.
    if (tx.recipients.length - tx.acceptedRecipients.size >= this.config.smtp.max_refused_recipients) {
      const refusal = this.refusal({ action: 'tempfail', reason: 'recipients.too_many_refused', detail: { limit: this.config.smtp.max_refused_recipients } }, 'rcpt', tx.reference);
      this.metrics.recipients.labels('refused_by_douane').inc();
      this.finishTransaction(state, { action: 'tempfail', reason: 'recipients.too_many_refused', reply: refusal.wire });
      throw refusal;
    }
    if (tx.acceptedRecipients.has(key)) {
      state.pendingSuccessText = `2.1.5 <${address.address}> is already a recipient of this message`;
      return;
    }
    const started = performance.now();
    tx.pendingRecipientGrant = undefined;
    const outcome = await this.check('rcpt', state, { recipient: address.address });
    const grant = tx.pendingRecipientGrant;
    tx.pendingRecipientGrant = undefined;
    tx.recipientLimits = undefined;
    if (isRefusal(outcome.verdict)) {
      const err = this.refusal(outcome.verdict, 'rcpt', tx.reference);
      tx.recipients.push({ address: address.address, accepted: false, reply: err.wire });
      this.metrics.recipients.labels('refused_by_douane').inc();
      if (grant) void this.limiter.refund(grant);
      throw err;
    }
    if (tx.done || !state.upstream) {
      if (grant) void this.limiter.refund(grant);
      throw clientGone('before its RCPT TO was relayed');
    }
    const upstream = state.upstream;
    let reply: SmtpReply;
    try {
      reply = await upstream.rcpt(address.address, this.relayedParams(tx, 'rcpt', paramsAsWritten(address), upstream));
    } catch (err) {
      if (grant) void this.limiter.refund(grant);
      const refusal = this.upstreamRefusal(err, 'rcpt', tx.reference);
      tx.recipients.push({ address: address.address, accepted: false, reply: refusal.wire });
      this.metrics.recipients.labels('upstream_unavailable').inc();
      throw refusal;
    }
    tx.timings.rcpt = (tx.timings.rcpt ?? 0) + elapsed(started);
    this.metrics.upstreamReplies.labels('rcpt', replyClass(reply.code)).inc();
    if (reply.code >= 300 && reply.code < 400) {
      // As for MAIL FROM: the recipient's fate is unknown, the client is told to try again.
      upstream.destroy();
      if (grant) void this.limiter.refund(grant);
      const refusal = this.upstreamRefusal(new UpstreamError('protocol', `the upstream answered RCPT TO with ${formatReply(reply)}`, reply), 'rcpt', tx.reference);
      tx.recipients.push({ address: address.address, accepted: false, reply: refusal.wire });
      this.metrics.recipients.labels('upstream_unavailable').inc();
      throw refusal;
    }
    const accepted = reply.code >= 200 && reply.code < 300; // 251 forwarded, 252 cannot verify but will try
    tx.recipients.push({ address: address.address, accepted, reply: formatReply(reply), params: paramsAsWritten(address) });
    if (accepted) tx.acceptedRecipients.add(key);
    this.metrics.recipients.labels(accepted ? 'accepted' : 'refused_by_upstream').inc();
    if (grant) {
      // A transaction that ended while the upstream answered (the client left) has settled its grants already.
      if (accepted && !tx.done) tx.recipientGrants.push(grant);
      else void this.limiter.refund(grant);
    }
    if (!accepted) throw passThrough(reply, tx.reference);
    state.pendingSuccessText = withEnhanced(reply, '2.1.5');
  }

  /** The message's facts: from its first look, or from a second look in a thread (read again from the spool). */
  private async inspected(inspection: MessageInspection, spool: Spool, tx: Transaction): Promise<MessageFacts> {
    const started = performance.now();
    let facts: MessageFacts;
    try {
      facts = await inspection.end(() => spool.reader());
    } catch (err) {
      if (inspection.secondLook) this.metrics.secondLooks.labels('failed').inc();
      throw err;
    }
    if (inspection.secondLook) {
      this.metrics.secondLooks.labels('inspected').inc();
      tx.timings.second_look = elapsed(started);
    }
    return facts;
  }

  private async onData(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const state = this.requireState(session);
    const tx = state.tx;
    if (!tx || !state.upstream) throw new Error('DATA without an open transaction');
    const started = performance.now();
    const spool = new Spool(this.config.spool.dir, this.config.spool.memory_threshold);
    tx.spool = spool;
    const max = this.config.smtp.max_message_size;
    const watch = new LineEndingWatch();
    const scanning = tx.policy.doc.scanning;
    const scan = this.scanner?.start();
    const limits = tx.policy.doc.inspection;
    const inspection = new MessageInspection({ maxParts: limits.max_parts, maxDepth: limits.max_depth, maxHeaderSize: limits.max_header_size }, this.inspectionPool);
    // The upstream session waits, idle, while the message comes in and is checked: a slow client with a
    // large message must not outlast the upstream's own timeout.
    const stopKeepalive = state.upstream.keepAlive();
    let size = 0;
    try {
      try {
        // One pass over the stream: line endings, size, spool, MIME inspection.
        let failed: unknown;
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          size += chunk.length;
          watch.push(chunk);
          // Past the limit, or once storing failed, we keep reading (the client must reach its final dot
          // before it is answered) but stop storing.
          if (size > max) tx.oversize = true;
          else if (failed === undefined) {
            try {
              await spool.write(chunk);
              await inspection.write(chunk);
              if (scan && !tx.scanTooBig) {
                if (size > scanning.max_size) {
                  tx.scanTooBig = true;
                  scan.abort();
                } else await scan.write(chunk);
              }
            } catch (err) {
              failed = err ?? new Error('storing the message failed');
              scan?.abort();
            }
          }
        }
        if (failed !== undefined) throw failed;
        await spool.finish();
        // clamd gets the end of the message first, so that its scan runs while the MIME facts are
        // completed and the data checks' slow lookups (the bulk count) start.
        const scanned = scan && !tx.scanTooBig && !tx.oversize ? scan.end(() => spool.reader()) : undefined;
        if (!scanned) scan?.abort();
        // It never rejects; this only keeps a failure before the await below from going unhandled.
        scanned?.catch(() => undefined);
        if (!tx.oversize) tx.message = await this.inspected(inspection, spool, tx);
        if (tx.message) preparePhase('data', this.context('data', state), this.pipeline.data);
        if (scanned) {
          const { result, signature, detail, ms, scanner } = await scanned;
          tx.scan = { result, signature, detail };
          tx.timings.scan = ms;
          if (scanner) tx.scanner = scanner;
        }
      } catch (err) {
        scan?.abort();
        if ((err as NodeJS.ErrnoException)?.code === 'ECONNECTION') {
          this.finishTransaction(state, { action: 'abandoned', reply: `client went away during DATA: ${(err as Error).message}` });
          throw err;
        }
        // Our side failed while taking the message in (the spool's disk is full or gone): the client,
        // still connected, has sent its final dot and gets a 451.
        this.log.error({ event: 'internal_error', phase: 'data', session: state.id, ref: tx.reference, err: (err as Error)?.message }, 'the message could not be received');
        const refusal = this.refusal({ action: 'tempfail', reason: 'internal.error' }, 'data', tx.reference);
        this.finishTransaction(state, { action: 'tempfail', reason: 'internal.error', reply: refusal.wire, note: `receiving the message failed: ${(err as Error)?.message}` });
        throw refusal;
      }
      tx.size = size;
      tx.lineEndings = watch.end();
      tx.timings.data = elapsed(started);
      tx.receivedAt = performance.now();
      this.metrics.messageSize.observe(size);

      const checksStarted = performance.now();
      const outcome = await this.check('data', state);
      tx.timings.checks = elapsed(checksStarted);
      if (isRefusal(outcome.verdict)) {
        let verdict = outcome.verdict;
        if (verdict.action === 'quarantine' && !(await this.keepInQuarantine(state, tx, verdict))) {
          // Refusing for good without keeping a copy would lose a possible false positive: the client retries.
          verdict = { action: 'tempfail', reason: 'internal.error', evidence: { quarantine: 'failed' } };
        }
        // A rule's own refusal is the message's fate; a tempfail of ours (or of a check) brings it back.
        await this.settleStrikes(tx, settlesMessage(verdict));
        const err = this.refusal(verdict, 'data', tx.reference);
        this.finishTransaction(state, outcomeOf(verdict, err));
        throw err;
      }

      // A NOOP still in flight is answered before DATA goes out (and the client may leave meanwhile).
      await stopKeepalive();
      // The client left while the message was being checked: it got no 250 and will send it again.
      if (tx.done || !state.upstream) throw clientGone('before the message was relayed');
      const upstream = state.upstream;
      const relayStarted = performance.now();
      let reply: SmtpReply;
      tx.relaying = true;
      try {
        const message = relayedMessage(spool, tx.message);
        reply = await upstream.data(message.stream, tagHeader(tx.tags), message.size, () => (tx.lastBytesSent = true));
        if (reply.code !== 250 && reply.code < 400) {
          // 251, 354, … after the final dot answer nothing: the message's fate is unknown, so the client
          // must send it again (a possible duplicate, never a loss), and the connection is not reused.
          upstream.destroy();
          throw new UpstreamError('protocol', `the upstream answered the message with ${formatReply(reply)} instead of 250`, reply);
        }
      } catch (err) {
        tx.relaying = false;
        void this.settleStrikes(tx, false);
        // The whole message went out and no answer came: the upstream may have queued it. The client
        // is not told it was not accepted, only to send it again.
        const reason = tx.lastBytesSent ? 'upstream.no_answer' : 'upstream.unavailable';
        const refusal = this.upstreamRefusal(err, 'data', tx.reference, reason);
        this.finishTransaction(state, { action: 'tempfail', reason, reply: refusal.wire });
        throw refusal;
      }
      tx.relaying = false;
      tx.timings.relay = elapsed(relayStarted);
      this.metrics.upstreamReplies.labels('data', replyClass(reply.code)).inc();
      // Relayed, or refused for good by the upstream: the message will not come back. Recorded without
      // holding the client's reply: a message already delivered must not wait on the ladder's steps (a
      // client giving up on a slow reply would send it again).
      const settled = this.settleStrikes(tx, reply.code === 250 || reply.code >= 500);
      void settled.catch((err: unknown) => this.log.error({ event: 'strike_failed', ref: tx.reference, err: (err as Error)?.message }, 'the strikes of a relayed message could not be recorded'));
      if (reply.code !== 250) {
        const err = passThrough(reply, tx.reference);
        this.finishTransaction(state, { action: reply.code < 500 ? 'tempfail' : 'reject', reply: err.wire });
        throw err;
      }
      const text = withEnhanced(reply, '2.0.0');
      // Accepted upstream: it counts, and is logged as accepted, even if the client left before our 250.
      this.finishTransaction(state, { action: 'accept', reply: `250 ${text}`, ...(state.closed ? { note: 'the client went away before the reply' } : {}) });
      return text;
    } finally {
      void stopKeepalive();
      // The reply stands whatever removing the spooled copy does: after the upstream's 250, a 451 would
      // have the client send again a message already delivered. A copy left behind is removed at the next
      // start.
      await spool.dispose().catch((err: unknown) =>
        this.log.error({ event: 'spool_cleanup_failed', session: state.id, ref: tx.reference, err: (err as Error)?.message }, 'the spooled copy of a message could not be removed'),
      );
    }
  }

  /**
   * RSET (or EHLO) in the middle of a transaction: it ends now, not at the next MAIL or the session's end.
   * Until then its counts held the account's allowance (other sessions refused, and struck) and a drain
   * waited for it.
   */
  private onTransactionReset(session: SMTPServerSession): void {
    const state = this.sessions.get(session.id);
    if (!state?.tx || state.tx.done || state.tx.relaying) return;
    this.finishTransaction(state, { action: 'abandoned', note: 'reset by the client before DATA' });
  }

  private onClose(session: SMTPServerSession): void {
    const state = this.sessions.get(session.id);
    if (!state) return;
    state.closed = true;
    // A message on its way to the upstream is not abandoned: its DATA handler ends it with the upstream's
    // answer and then lets the upstream connection go. Touching the connection now would write into the
    // message (RSET, QUIT) or take its reply for another command's.
    const relaying = Boolean(state.tx?.relaying && !state.tx.done);
    if (state.tx && !state.tx.done && !relaying) this.finishTransaction(state, { action: 'abandoned' });
    this.sessions.delete(session.id);
    const left = (this.perIp.get(state.remoteAddress) ?? 1) - 1;
    if (left <= 0) this.perIp.delete(state.remoteAddress);
    else this.perIp.set(state.remoteAddress, left);
    this.metrics.sessionsActive.labels(state.listener.name).dec();
    if (state.sessionCounted && state.account) void this.limiter.sessionClosed(state.account, state.id);
    this.metrics.sessions.labels(state.listener.name, state.refused ? 'refused' : state.endedBy ? 'ended_by_douane' : state.transactions ? 'mail' : 'no_mail').inc();
    if (!relaying) this.disposeUpstream(state);
    this.log.debug({ event: 'session_end', session: state.id, ref: state.reference, listener: state.listener.name, client: state.remoteAddress, account: state.account, transactions: state.transactions, ms: this.clock.now() - state.startedAt }, 'session closed');
  }

  // ---------------------------------------------------------------- helpers

  /** The session is over: its upstream connection goes back to the pool (trusted) or says QUIT (AUTH). */
  private disposeUpstream(state: SessionState): void {
    if (!state.upstream) return;
    const upstream = state.upstream;
    state.upstream = undefined;
    if (state.listener.mode === 'trusted') this.upstream.release(upstream);
    else void upstream.quit();
  }

  private requireState(session: SMTPServerSession): SessionState {
    const state = this.sessions.get(session.id);
    if (!state) throw new Error(`no state for session ${session.id}`);
    return state;
  }

  private identity(session: SMTPServerSession): ClientIdentity {
    return { address: session.remoteAddress, port: session.remotePort, helo: session.hostNameAppearsAs || undefined, secure: session.secure };
  }

  /**
   * The parameters relayed with MAIL FROM or RCPT TO (envelopeParams). DSN parameters an upstream without
   * DSN cannot take (it stopped offering it after this client's EHLO, or the client sent them unasked)
   * are left out and logged: the message goes, without the notices asked for.
   */
  private relayedParams(tx: Transaction, command: 'mail' | 'rcpt', written: WrittenParams, upstream: SmtpClient): string[] {
    const { params, dsnLeftOut } = envelopeParams(command, written, (extension) => upstream.supports(extension));
    if (dsnLeftOut.length) this.log.warn({ event: 'dsn_not_relayed', ref: tx.reference, params: dsnLeftOut }, `the upstream does not offer DSN: ${dsnLeftOut.join(' and ')} left out; the delivery notices asked for may not come`);
    return params;
  }

  /** The upstream connection for this transaction: the session's own (AUTH), or one from the trusted pool. */
  private async upstreamFor(state: SessionState, session: SMTPServerSession): Promise<SmtpClient> {
    if (state.closed) throw clientGone('before its MAIL FROM was relayed');
    if (state.listener.mode !== 'trusted') {
      if (state.upstream?.usable) return state.upstream;
      // The upstream dropped the authenticated session; without the password we cannot log in again.
      // Said with the upstream's reason (an MTA that restarts, or one that times sessions out sooner than
      // Douane does), and counted apart: a customer's idle session ending is no outage of the MTA.
      const reference = state.tx?.reference ?? state.reference;
      this.metrics.upstreamErrors.labels('session_lost').inc();
      this.log.warn({ event: 'upstream_session_lost', ref: reference, session: state.id, account: state.account, err: state.upstream?.lostBecause ?? 'no upstream session' }, 'the upstream ended the authenticated session');
      throw this.refusal({ action: 'tempfail', reason: 'upstream.session_lost' }, 'mail', reference);
    }
    if (state.upstream?.usable) return state.upstream;
    const upstream = await this.upstream.forTrusted(this.identity(session));
    if (state.closed) {
      this.upstream.release(upstream);
      throw clientGone('before its MAIL FROM was relayed');
    }
    state.upstream = upstream;
    return upstream;
  }

  /** Counted and logged with the reference the client reads: its transaction line says only upstream.unavailable. */
  private upstreamFailed(err: unknown, phase: Phase, reference: string): void {
    const kind = err instanceof UpstreamError ? err.kind : 'internal';
    this.metrics.upstreamErrors.labels(kind).inc();
    // Unreachable, not merely refusing: the health timer probes it from now on, so that its readiness
    // gauge (and the alert on it) follows without waiting for someone to ask /readyz.
    if (kind === 'connect' || kind === 'timeout' || kind === 'closed' || kind === 'tls') this.upstreamUnready = true;
    this.log.warn({ event: 'upstream_error', ref: reference, phase, kind, err: (err as Error)?.message }, 'upstream failed');
  }

  private upstreamRefusal(err: unknown, phase: Phase, reference: string, reason: 'upstream.unavailable' | 'upstream.no_answer' = 'upstream.unavailable'): ReplyError {
    if (!(err instanceof UpstreamError)) throw err;
    this.upstreamFailed(err, phase, reference);
    return this.refusal({ action: 'tempfail', reason, evidence: { kind: err.kind } }, phase, reference);
  }

  private onProtocolRefusal(listener: string, session: SMTPServerSession, reason: ReasonCode, reply: WireReply, client: string): void {
    // Counted in the phase the refusal belongs to, as the pipeline's are: a connection's as it opens, a
    // login's (AUTH before STARTTLS), MAIL's (MAIL before AUTH, a declared size over the limit); the rest
    // are the protocol's.
    const phase = reason.startsWith('connection.') ? 'connect' : reason === 'auth.required' || reason === 'message.too_big' ? 'mail' : reason.startsWith('auth.') ? 'auth' : 'protocol';
    this.metrics.refusals.labels(phase, reason).inc();
    this.metrics.replies.labels(phase, replyClass(reply.code)).inc();
    const state = this.sessions.get(session.id);
    if (state && reply.close) state.endedBy ??= reason;
    this.log.info(
      { event: 'refusal', session: session.id, ref: this.sessionReference(session), listener, client: session.remoteAddress || client, account: state?.account, reason, reply: `${reply.code} ${reply.enhanced}` },
      reason,
    );
  }

  /**
   * smtp-server's own error replies (a command it does not know, bad syntax, a command out of sequence):
   * the client's mistakes rather than refusals, but their reference must lead to a line of the log.
   */
  private onProtocolError(session: SMTPServerSession, reply: string): void {
    this.metrics.replies.labels('protocol', replyClass(Number(reply.slice(0, 3)))).inc();
    const state = this.sessions.get(session.id);
    this.log.info({ event: 'protocol_error', session: session.id, ref: this.sessionReference(session), listener: state?.listener.name, client: session.remoteAddress, account: state?.account, reply }, 'protocol error');
  }

  /**
   * One line per AUTH attempt: the login as typed, the account it is once known (after a success), our
   * reason when the refusal is ours (as the refusal counters have it), the upstream's reply or error.
   */
  private logAuth(state: SessionState, username: string, result: string, why: { reason?: ReasonCode; detail?: string; evidence?: Record<string, unknown> } = {}): void {
    this.log.info({ event: 'auth', session: state.id, ref: state.reference, listener: state.listener.name, client: state.remoteAddress, login: username, account: state.account ?? username, result, reason: why.reason, detail: why.detail, evidence: why.evidence }, `auth ${result}`);
  }

  /** Keeps the refused message and its metadata; false if it could not be stored. */
  private async keepInQuarantine(state: SessionState, tx: Transaction, verdict: Verdict): Promise<boolean> {
    try {
      const meta = await this.quarantine.put(
        {
          reference: tx.reference,
          at: new Date(this.clock.now()).toISOString(),
          account: state.account ?? tx.mailFrom,
          listener: state.listener.name,
          client: state.remoteAddress,
          sender: tx.mailFrom,
          recipients: tx.recipients.filter((r) => r.accepted).map((r) => r.address),
          mailParams: tx.params,
          recipientParams: Object.fromEntries(tx.recipients.filter((r) => r.accepted && r.params && Object.keys(r.params).length).map((r) => [r.address, r.params!])),
          action: verdict.action,
          reason: verdict.reason,
          rule: verdict.rule?.id,
          article: verdict.rule?.article,
          signature: tx.scan?.signature,
          policyVersion: tx.policy.version,
          size: tx.size ?? 0,
          subject: tx.message?.subject,
          messageId: tx.message?.headers.get('message-id')?.[0],
        },
        tx.spool!.reader(),
      );
      tx.quarantineId = meta.id;
      this.metrics.quarantined.labels(verdict.reason ?? 'none').inc();
      this.updateQuarantineGauges().catch((err: Error) => this.log.warn({ event: 'quarantine_count_failed', err: err.message }, 'could not count the quarantine for its metrics'));
      return true;
    } catch (err) {
      this.log.error({ event: 'quarantine_failed', ref: tx.reference, err: (err as Error).message }, 'could not keep the message in quarantine; tempfailing it instead');
      return false;
    }
  }

  private async purgeQuarantine(): Promise<void> {
    try {
      const before = new Date(this.clock.now() - this.config.quarantine.retention).toISOString();
      const { removed, entries, claimed, failed } = await this.quarantine.purge(this.clock.now() - this.config.quarantine.retention);
      for (const c of claimed) this.log.warn({ event: 'quarantine_purge_skipped', quarantine_id: c.id, err: c.why }, 'a quarantined message past retention was left in place: a release or deletion holds it');
      for (const f of failed) this.log.error({ event: 'quarantine_purge_failed', quarantine_id: f.id, err: f.why }, 'a quarantined message past retention could not be removed');
      for (const e of entries) if (e.damaged) this.log.warn({ event: 'quarantine_damaged_purged', quarantine_id: e.id, why: e.damaged }, 'a damaged quarantine entry past retention was removed');
      if (removed) this.log.info({ event: 'quarantine_purged', removed }, `purged ${removed} quarantined messages past retention`);
      await auditPurge(this.audit, 'douane', entries, before);
      await this.updateQuarantineGauges();
    } catch (err) {
      this.log.warn({ event: 'quarantine_purge_failed', err: (err as Error).message }, 'quarantine purge failed');
    }
  }

  private async updateQuarantineGauges(): Promise<void> {
    const { entries, bytes } = await this.quarantine.count();
    this.metrics.quarantineSize.set(entries);
    this.metrics.quarantineBytes.set(bytes);
  }

  /** Counts stand only for what the upstream accepted: commit an accepted message, give back the rest. */
  private settleLimits(state: SessionState, tx: Transaction, accepted: boolean): void {
    const account = state.account ?? tx.mailFrom;
    if (accepted) {
      const limits = tx.policy.account(account, tx.reportedPlan).limits;
      void this.limiter.accepted(account, limits, tx.size ?? 0, tx.policy.doc.baseline.history, tx.limitGrant);
      return;
    }
    for (const grant of [tx.limitGrant, ...tx.recipientGrants]) if (grant) void this.limiter.refund(grant);
    tx.recipientGrants = [];
  }

  private async bruteForceStrike(state: SessionState, username: string, failures: number): Promise<void> {
    const policy = this.policies.current;
    const event = policy.doc.auth.strike;
    if (!event) return;
    await this.strikes.record({
      account: await this.enforcer.canonical(comparableAddress(username)),
      event,
      weight: policy.doc.strikes.events[event]!.weight,
      article: '4.1',
      reference: state.reference,
      policyVersion: policy.version,
      evidence: { client: state.remoteAddress, failures, limit: policy.doc.auth.failures_per_account },
      at: this.clock.now(),
    });
  }

  /** Ends the transaction: one log line, metrics, and the trusted upstream goes back to the pool. */
  /**
   * Records the data phase's strikes once the message's fate is known (final), or drops them when it will
   * come back: each try of one message would otherwise strike the account again.
   */
  private async settleStrikes(tx: Transaction, final: boolean): Promise<void> {
    const pending = tx.pendingStrikes ?? [];
    tx.pendingStrikes = undefined;
    if (final) for (const strike of pending) await this.strikes.record(strike);
  }

  private finishTransaction(state: SessionState, outcome: NonNullable<Transaction['outcome']>): void {
    const tx = state.tx;
    if (!tx || tx.done) return;
    tx.done = true;
    tx.outcome = outcome;
    tx.timings.total = this.clock.now() - tx.startedAt;
    this.settleLimits(state, tx, outcome.action === 'accept');
    this.metrics.transactions.labels(state.listener.name, outcome.action, outcome.reason ?? 'none').inc();
    // What went through unscanned, once it did: not the messages refused later or retried.
    if (outcome.action === 'accept' && tx.tags.includes('scan.failed')) this.metrics.scanFailOpen.inc();
    if (outcome.action === 'accept' && tx.tags.includes('scan.skipped')) this.metrics.scanSkipped.inc();
    // To the final reply: a transaction the client abandoned had none, only its own idle time.
    if (outcome.action !== 'abandoned') this.metrics.transactionDuration.observe(tx.timings.total / 1000);
    this.log.info(
      {
        event: 'transaction',
        ref: tx.reference,
        session: state.id,
        listener: state.listener.name,
        client: state.remoteAddress,
        account: state.account,
        // A plan the lifecycle API reports that the policy does not define (a class of service missing
        // from lifecycle.zimbra.cos_plans): default_plan applied.
        plan_not_in_policy: tx.reportedPlan !== undefined && !tx.policy.definesPlan(tx.reportedPlan) ? tx.reportedPlan : undefined,
        from: tx.mailFrom,
        rcpt: tx.recipients.map((r) => ({ to: r.address, ok: r.accepted, reply: r.reply })),
        // What an abuse complaint quotes (a bounce, a spam report): cut, as the client wrote it.
        message_id: tx.message?.headers.get('message-id')?.[0]?.trim().slice(0, 256),
        size: tx.size,
        verdict: outcome.action,
        reason: outcome.reason,
        rule: outcome.rule?.id,
        article: outcome.rule?.article,
        rule_source: outcome.rule?.source,
        policy: tx.policy.version,
        would: tx.would.length ? tx.would : undefined,
        scan: tx.scan ? { ...tx.scan, scanner: tx.scanner } : undefined,
        quarantine: tx.quarantineId,
        limits: tx.limits && (tx.limits.exceeded.length || tx.limits.degraded) ? { exceeded: tx.limits.exceeded, degraded: tx.limits.degraded, usage: tx.limits.usage } : undefined,
        baseline: tx.baseline,
        reply: outcome.reply,
        note: outcome.note,
        tags: tx.tags.length ? tx.tags : undefined,
        bulk: tx.bulk,
        // A check that failed says why (its error): the reference the client was given leads to it.
        checks: tx.results.map((r) => ({ check: r.check, result: r.result, ...(r.reason ? { reason: r.reason } : {}), ...(r.note ? { note: r.note } : {}), ...(r.result === 'error' && r.evidence ? { evidence: r.evidence } : {}), ms: r.ms })),
        timings: tx.timings,
      },
      `transaction ${outcome.action}`,
    );
    if (state.listener.mode === 'trusted' && state.upstream && !state.upstream.inTransaction) {
      this.disposeUpstream(state);
    } else if (state.listener.mode === 'trusted' && state.upstream) {
      // Refused by us or the client went away mid-transaction: reset before the connection is reused.
      const upstream = state.upstream;
      state.upstream = undefined;
      upstream.rset().then(
        () => this.upstream.release(upstream),
        () => upstream.destroy(),
      );
    }
    // A transaction that ends after its client left (its message was on its way upstream) lets the
    // session's upstream connection go, as the close would have.
    if (state.closed) this.disposeUpstream(state);
  }
}

/**
 * The client left while a handler waited (upstream, Redis, scanner). What the handler acquired since is
 * given back by the handler itself: the session's cleanup has already run. The guard logs it, nobody is
 * left to answer.
 */
/**
 * The credentials to pass upstream: the client's bytes when they are what smtp-server decoded (they differ
 * only where the bytes are not UTF-8), else smtp-server's own reading.
 */
function asSent(auth: SMTPServerAuthentication, session: SMTPServerSession): CredentialsAsSent {
  const raw = takeCredentialsAsSent(session);
  const same = raw !== undefined && raw.username.toString() === (auth.username ?? '') && raw.password.toString() === (auth.password ?? '');
  if (same) return raw;
  return { username: Buffer.from(auth.username ?? ''), password: Buffer.from(auth.password ?? ''), authzid: Buffer.from(auth.authzid ?? '') };
}

function clientGone(what: string): Error {
  return Object.assign(new Error(`the client went away ${what}`), { code: 'ECONNECTION' });
}

/**
 * The upstream's refusal, relayed to the client as it is (enhanced code added if the upstream gave none),
 * with the incident reference at the end: like every refusal, it finds the transaction's log line.
 */
function passThrough(reply: SmtpReply, reference: string): ReplyError {
  // Without one of its own: the class default (RFC 3463), as README says; only a syntax or sequence error
  // (500–504) is one whatever else it means. 550 may be an unknown user as well as a policy refusal: not 5.7.1.
  const enhanced = reply.enhanced ?? (reply.code >= 500 && reply.code <= 504 ? PROTOCOL_ENHANCED[reply.code] : undefined) ?? `${String(reply.code)[0]}.0.0`;
  const referenced = (text: string) => `${text} (Ref ${reference})`;
  const lines = reply.lines.length > 1 ? [...reply.lines.slice(0, -1), referenced(reply.lines[reply.lines.length - 1]!)] : undefined;
  return new ReplyError({ code: reply.code, enhanced, text: referenced(replyText(reply)), close: false, ...(lines ? { lines } : {}) });
}

/**
 * Where notices go: `enforcement.notify.smtp`, or the upstream's trusted port, reached as relayed mail
 * reaches it (its TLS mode, CA and certificate name): a notice must not fail on the certificate relayed
 * mail passes with.
 */
export function noticeSmtp(config: Config): NoticeSmtp {
  const own = config.enforcement.notify.smtp;
  if (own) return { host: own.host, port: own.port, secure: own.secure, verify_certificate: own.verify_certificate, ...(own.ca ? { ca: readFileSync(own.ca) } : {}), ...(own.servername ? { servername: own.servername } : {}) };
  const u = config.upstream;
  return {
    host: u.host,
    port: u.trusted_port,
    secure: u.tls === 'implicit',
    require_tls: u.tls === 'starttls',
    ignore_tls: u.tls === 'none',
    verify_certificate: u.verify_certificate,
    ...(u.ca ? { ca: readFileSync(u.ca) } : {}),
    ...(u.servername ? { servername: u.servername } : {}),
  };
}

/** Douane's own header fields: the upstream must read only Douane's. */
const OWN_FIELDS = ['x-douane-tags'];

/**
 * The message as it goes to the upstream: without a client's own X-Douane-Tags (its size, which BDAT
 * announces, is then not known beforehand: the message goes by DATA). When the inspection stopped short of
 * the header's end (a MIME limit, let through by a rule in monitor mode), the header is filtered unread.
 */
function relayedMessage(spool: Spool, facts: MessageFacts | undefined): { stream: AsyncIterable<Buffer>; size?: number } {
  const clean = facts && !facts.mimeLimitExceeded && !OWN_FIELDS.some((name) => facts.headers.has(name));
  if (clean) return { stream: spool.reader(), size: spool.size };
  return { stream: withoutHeaderFields(spool.reader(), OWN_FIELDS) };
}

/** Rules with the action "tag" mark the message for the upstream's own filters. */
function tagHeader(tags: string[]): Buffer | undefined {
  if (tags.length === 0) return undefined;
  // Folded before 78 characters (RFC 5322 2.1.1): many tags on one line could pass the 998 an MTA takes.
  const lines = [''];
  for (const tag of new Set(tags)) {
    const line = lines[lines.length - 1]!;
    if (line !== '' && 'X-Douane-Tags: '.length + line.length + tag.length + 2 > 78) lines.push(tag);
    else lines[lines.length - 1] = line === '' ? tag : `${line}, ${tag}`;
  }
  return Buffer.from(`X-Douane-Tags: ${lines.join(',\r\n ')}\r\n`);
}

function withEnhanced(reply: SmtpReply, fallback: string): string {
  const enhanced = reply.enhanced ?? fallback;
  return formatWire({ code: reply.code, enhanced, text: replyText(reply), close: false, lines: reply.lines });
}

function outcomeOf(verdict: Verdict, err: ReplyError): NonNullable<Transaction['outcome']> {
  return { action: verdict.action, reason: verdict.reason, rule: verdict.rule, reply: err.wire };
}

function elapsed(since: number): number {
  return Math.round((performance.now() - since) * 100) / 100;
}
