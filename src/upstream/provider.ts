// Opens upstream sessions. Authenticated clients each get their own upstream connection on the
// submission port (their AUTH is checked there). Trusted-listener sessions go to the upstream's trusted
// port and reuse idle connections from a small pool, since they carry no per-user state.

import { readFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import type { UpstreamConfig } from '../config/schema.js';
import { SmtpClient, type UpstreamEndpoint, type XclientAttributes } from './smtp-client.js';

export interface ClientIdentity {
  address: string;
  port: number;
  helo?: string;
  secure: boolean;
}

export interface UpstreamProvider {
  /** a fresh connection for an authenticating client */
  forAuth(client: ClientIdentity): Promise<SmtpClient>;
  /** a connection for a trusted-listener transaction, possibly reused */
  forTrusted(client: ClientIdentity): Promise<SmtpClient>;
  /** hands a trusted connection back: pooled if clean, else closed */
  release(upstream: SmtpClient): void;
  /**
   * Whether the upstream offered an extension in its latest EHLO on that port: what a client is offered
   * before its own upstream session exists. False until a first session there (or learn) has said.
   */
  offers(port: UpstreamPort, extension: string): boolean;
  /** Opens one session on that port to learn what the upstream offers (EHLO, then QUIT). */
  learn(port: UpstreamPort): Promise<void>;
  close(): Promise<void>;
}

/** the upstream's submission port (authenticated clients) or its trusted port */
export type UpstreamPort = 'submission' | 'trusted';

export function endpointsFrom(cfg: UpstreamConfig, heloName: string): { submission: UpstreamEndpoint; trusted: UpstreamEndpoint } {
  const base = {
    host: cfg.host,
    tls: cfg.tls,
    verifyCertificate: cfg.verify_certificate,
    ca: cfg.ca ? readFileSync(cfg.ca) : undefined,
    servername: cfg.servername,
    heloName: cfg.helo_name ?? heloName,
    timeouts: { ...cfg.timeouts },
  };
  return {
    submission: { ...base, port: cfg.port },
    trusted: { ...base, port: cfg.trusted_port },
  };
}

/**
 * A pooled connection that saw this many refusals, or RSET and NOOP commands, since its last accepted
 * message is closed rather than handed to the next session: Postfix counts them per connection (half its
 * defaults, smtpd_soft_error_limit 10 and smtpd_junk_command_limit 100), and past its limits slows every
 * reply down or hangs up — on whichever session holds the connection then.
 */
const POOLED_ERRORS = 5;
const POOLED_JUNK = 50;

export class PooledUpstreamProvider implements UpstreamProvider {
  private readonly idle: SmtpClient[] = [];
  private readonly offered: Record<UpstreamPort, ReadonlySet<string>> = { submission: new Set(), trusted: new Set() };
  private closed = false;
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly endpoints: { submission: UpstreamEndpoint; trusted: UpstreamEndpoint },
    private readonly opts: { poolSize: number; idleMs: number; xclient: boolean },
  ) {
    this.sweeper = setInterval(() => this.sweep(), Math.max(1000, Math.min(opts.idleMs, 10_000)));
    this.sweeper.unref();
  }

  forAuth(client: ClientIdentity): Promise<SmtpClient> {
    return this.connect('submission', client);
  }

  async forTrusted(client: ClientIdentity): Promise<SmtpClient> {
    // With XCLIENT each connection carries one client's identity, so it cannot be shared.
    if (!this.opts.xclient) {
      while (this.idle.length) {
        const c = this.idle.pop()!;
        if (c.usable && Date.now() - c.lastUsedAt < this.opts.idleMs) return c;
        c.destroy();
      }
    }
    return this.connect('trusted', client);
  }

  offers(port: UpstreamPort, extension: string): boolean {
    return this.offered[port].has(extension.toUpperCase());
  }

  async learn(port: UpstreamPort): Promise<void> {
    const upstream = await SmtpClient.connect(this.endpoints[port]);
    this.offered[port] = new Set(upstream.capabilities.keys());
    await upstream.quit();
  }

  private async connect(port: UpstreamPort, client: ClientIdentity): Promise<SmtpClient> {
    const upstream = await SmtpClient.connect(this.endpoints[port], { xclient: this.xclient(client) });
    this.offered[port] = new Set(upstream.capabilities.keys());
    return upstream;
  }

  release(upstream: SmtpClient): void {
    // A reply still due (a MAIL sent for a client that left) would answer the next session's first command.
    const worn = upstream.errorsSinceDelivery >= POOLED_ERRORS || upstream.junkSinceDelivery >= POOLED_JUNK;
    if (this.closed || this.opts.xclient || worn || !upstream.usable || upstream.inTransaction || upstream.awaitingReply || upstream.authenticated || this.idle.length >= this.opts.poolSize) {
      void upstream.quit();
      return;
    }
    this.idle.push(upstream);
  }

  private xclient(client: ClientIdentity): XclientAttributes | undefined {
    if (!this.opts.xclient) return undefined;
    // An IPv6 address goes with the IPV6: prefix, as Postfix's XCLIENT wants it (its address literal form).
    const address = client.address.replace(/^::ffff:/, '');
    return { ADDR: isIPv6(address) ? `IPV6:${address}` : address, PORT: String(client.port), HELO: client.helo, PROTO: 'ESMTP' };
  }

  private sweep(): void {
    const now = Date.now();
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const c = this.idle[i]!;
      if (!c.usable || now - c.lastUsedAt >= this.opts.idleMs) {
        this.idle.splice(i, 1);
        void c.quit();
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    await Promise.all(this.idle.splice(0).map((c) => c.quit()));
  }
}
