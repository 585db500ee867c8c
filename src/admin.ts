// The admin HTTP endpoint, on its own port (loopback by default): /metrics for Prometheus, /healthz
// (the process answers) and /readyz (ready to take mail: every dependency reachable, or explicitly
// allowed to fail open). Optional bearer tokens protect /metrics and the accounts API; /healthz and
// the status code of /readyz stay open, because container health checks and load balancers often cannot
// send a token — without it /readyz says only whether Douane is ready, not which dependency failed.
// Named tokens let the audit trail say whose token acted (not only what the caller declares), and a
// `read` token (Prometheus, dashboards) cannot suspend, reinstate or approve anything. With no token at
// all, the accounts API answers only the networks of admin.without_token_from (this host by default).

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import { comparableAddress } from './policy/facts.js';
import { AddressList, LOOPBACK, type Cidr } from './validate/net.js';
import { DURATION_MAX_MS } from './validate/schema.js';

export interface ReadinessResult {
  ok: boolean;
  detail?: string;
}

export interface NamedToken {
  name: string;
  token: string;
  scope: 'read' | 'act';
}

/** Who a request comes from: the full-access token (or no token configured), or a named one. */
type Caller = { scope: 'all' } | { scope: 'read' | 'act'; name: string };

/** A named readiness probe; probes are cached by their owners, /readyz runs them all. */
export type ReadinessProbe = () => Promise<ReadinessResult>;

/** The account actions behind /accounts (the enforcement engine implements it). */
export interface AccountsAdmin {
  /** the account an address belongs to (an alias is its account's) */
  canonical(address: string): Promise<string>;
  status(account: string): Promise<unknown>;
  strikes(account: string): Promise<unknown>;
  history(account: string): Promise<unknown>;
  suspend(account: string, action: 'suspend_sending' | 'suspend_account', why: { by: string; reference: string; reason: string; until?: number }): Promise<unknown>;
  reinstate(account: string, by: string): Promise<void>;
  /** whether a suspension, throttle, pending approval or lock is kept under this very address */
  keptUnder(address: string): Promise<boolean>;
  approve(account: string, by: string): Promise<unknown>;
  overview(): Promise<unknown>;
  breaker(): Promise<unknown>;
  resetBreaker(by: string): Promise<void>;
}

export class AdminServer {
  private server: http.Server | undefined;
  private readonly probes = new Map<string, ReadinessProbe>();
  private accounts: AccountsAdmin | undefined;
  private readonly withoutTokenFrom: AddressList;

  /** Enables /accounts and /breaker (used by `douane accounts`). */
  setAccounts(accounts: AccountsAdmin): void {
    this.accounts = accounts;
  }

  constructor(
    private readonly opts: { address: string; port: number; token?: string; tokens?: NamedToken[]; without_token_from?: readonly Cidr[] },
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.withoutTokenFrom = new AddressList(this.tokenlessFrom);
  }

  private get tokenlessFrom(): readonly Cidr[] {
    return this.opts.without_token_from ?? LOOPBACK;
  }

  private get tokenless(): boolean {
    return !this.opts.token && !this.opts.tokens?.length;
  }

  addProbe(name: string, probe: ReadinessProbe): void {
    this.probes.set(name, async () => {
      const r = await probe();
      this.metrics.readiness.labels(name).set(r.ok ? 1 : 0);
      return r;
    });
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.log.error({ event: 'admin_error', err: err.message }, 'admin request failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error\n');
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`admin: cannot listen on ${this.opts.address}:${this.opts.port}: ${err.code === 'EADDRINUSE' ? 'the address is already in use' : err.message}`)));
      this.server!.listen(this.opts.port, this.opts.address, () => resolve());
    });
    this.log.info({ event: 'admin_listening', address: this.opts.address, port: this.port }, `admin endpoint on ${this.opts.address}:${this.port}`);
    if (this.tokenless && !/^(127\.|::1$|::ffff:127\.)/.test(this.opts.address)) {
      // In a container this is the norm (Prometheus scrapes it from another one), so a warning, not a refusal.
      const from = this.tokenlessFrom.map((c) => c.text).join(', ');
      this.log.warn({ event: 'admin_open', address: this.opts.address, accounts_api_from: from }, `the admin endpoint listens beyond loopback without a token: /metrics is open to whoever reaches it, the accounts API to ${from} only (admin.without_token_from)`);
    }
  }

  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? 0;
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }

  private async accountsRoute(req: http.IncomingMessage, res: http.ServerResponse, path: string, accounts: AccountsAdmin, caller: Caller): Promise<void> {
    const send = (status: number, body: unknown): void => void res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body, null, 2) + '\n');
    if (req.method !== 'GET' && caller.scope === 'read') return send(403, { error: `token "${caller.name}" may only read (scope read); suspending, reinstating, approving and resetting the breaker need a token with scope act` });
    // Blank is as good as not declared: the audit trail names no one "".
    // Percent-encoded UTF-8 (how `douane accounts` sends a login beyond ASCII), else as it came; read as a
    // person reads it (compatibility forms folded, invisible and control characters taken out), so that no
    // look-alike of a reserved name below passes for another.
    const raw = String(req.headers['x-douane-actor'] ?? '');
    const declared = (raw.includes('%') ? decodedOr(raw) : raw).normalize('NFKC').replace(UNSEEN, '').trim().slice(0, 100) || undefined;
    // A named token is verified, what the caller declares is not: both are kept, the verified name first,
    // marked "token:", which no declared actor may start with, in any case.
    if (declared?.toLowerCase().startsWith('token:')) return send(400, { error: 'X-Douane-Actor may not start with "token:": the audit trail keeps that for named tokens' });
    // "douane" is the actor of the automatic ladder: a person's action must not pass for one.
    if (declared?.trim().toLowerCase() === 'douane') return send(400, { error: 'X-Douane-Actor may not be "douane": the audit trail keeps that for automatic actions' });
    const actor = caller.scope === 'all' ? (declared ?? 'admin-api') : `token:${caller.name}${declared ? ` (${declared})` : ''}`;
    let body: Record<string, unknown>;
    try {
      body = req.method === 'POST' ? await readJson(req) : {};
    } catch (err) {
      return send(err instanceof TooLarge ? 413 : 400, { error: `the request body must be a JSON object of at most 64 KB: ${(err as Error).message}` });
    }
    let parts: string[];
    try {
      parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    } catch {
      return send(400, { error: `the path is not well percent-encoded: ${path}` });
    }
    try {
      if (parts[0] === 'breaker') {
        if (parts.length === 1 && req.method === 'GET') return send(200, await accounts.breaker());
        if (parts[1] === 'reset' && req.method === 'POST') {
          await accounts.resetBreaker(actor);
          return send(200, await accounts.breaker());
        }
      }
      if (parts[0] === 'accounts' && parts.length === 1 && req.method === 'GET') return send(200, await accounts.overview());
      const given = parts[1] === undefined ? undefined : comparableAddress(parts[1]);
      if (parts[0] === 'accounts' && parts.length <= 3 && given && /^[^\s@]+@[^\s@]+$/.test(given)) {
        // An alias from an abuse report's From: is its account, whose state is kept under the account's name.
        const account = await accounts.canonical(given);
        // What was done under an alias itself while the lifecycle API could not resolve it (a suspension,
        // a lock in Zimbra) is shown, reinstated and approved with the account's, asked by either name: the
        // address given, and the aliases the lifecycle API lists for the account.
        const op = parts[2] ?? '';
        const keptUnderAliases = async (status: unknown): Promise<string[]> => {
          const listed = ((status as { lifecycle?: { aliases?: string[] } | null }).lifecycle?.aliases ?? []).map(comparableAddress);
          const names = [...new Set([given, ...listed])].filter((n) => n !== account);
          const kept = await Promise.all(names.map((n) => accounts.keptUnder(n)));
          return names.filter((_, i) => kept[i]);
        };
        if (req.method === 'GET' && op === '') {
          const status = await accounts.status(account);
          const aliases = await keptUnderAliases(status);
          if (aliases.length === 0) return send(200, status);
          return send(200, { ...(status as object), kept_under_aliases: Object.fromEntries(await Promise.all(aliases.map(async (a) => [a, await accounts.status(a)]))) });
        }
        if (req.method === 'GET' && op === 'strikes') return send(200, await accounts.strikes(account));
        if (req.method === 'GET' && op === 'history') return send(200, await accounts.history(account));
        if (req.method === 'POST' && op === 'suspend') {
          // A misspelt key must not be dropped for a default: {"Action": "suspend_sending"} would lock the account.
          const unknown = Object.keys(body).filter((k) => !SUSPEND_KEYS.includes(k));
          if (unknown.length) return send(400, { error: `unknown field ${unknown.map((k) => JSON.stringify(k)).join(', ')}; a suspension takes ${SUSPEND_KEYS.join(', ')}` });
          // A reason or reference that is not text would be replaced by the default without a word.
          const notText = ['reason', 'reference'].filter((k) => body[k] !== undefined && typeof body[k] !== 'string');
          if (notText.length) return send(400, { error: `${notText.join(' and ')} must be text (a JSON string)` });
          // A misspelt action must not fall back to the heavier one: it would lock the account in Zimbra.
          if (body.action !== undefined && body.action !== 'suspend_sending' && body.action !== 'suspend_account') {
            return send(400, { error: `action must be suspend_account (the default) or suspend_sending, not ${JSON.stringify(body.action)}` });
          }
          const action: 'suspend_sending' | 'suspend_account' = body.action ?? 'suspend_account';
          const forMs = body.for_ms;
          if (forMs !== undefined && !(typeof forMs === 'number' && Number.isInteger(forMs) && forMs > 0 && forMs <= DURATION_MAX_MS)) {
            return send(400, { error: `for_ms must be a whole number of milliseconds, from 1 to ${DURATION_MAX_MS} (ten years)` });
          }
          const until = forMs === undefined ? undefined : Date.now() + forMs;
          if (action === 'suspend_account' && until !== undefined) return send(400, { error: 'a lock in the lifecycle API lasts until reinstated: give a duration with action suspend_sending (--sending-only)' });
          // Well-formed text only (no half of an emoji cut by a form): it goes to mail, logs and the state.
          const text = (v: unknown) => (typeof v === 'string' ? v.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD') : undefined);
          return send(200, await accounts.suspend(account, action, { by: actor, reference: text(body.reference) ?? `manual-${Date.now().toString(36)}`, reason: text(body.reason) ?? 'suspended by hand', until }));
        }
        if (req.method === 'POST' && op === 'reinstate') {
          const aliases = await keptUnderAliases(await accounts.status(account));
          await accounts.reinstate(account, actor);
          for (const alias of aliases) await accounts.reinstate(alias, actor);
          return send(200, await accounts.status(account));
        }
        if (req.method === 'POST' && op === 'approve') {
          // The account's own pending suspension first, else one waiting under an alias.
          for (const name of [account, ...(await keptUnderAliases(await accounts.status(account)))]) {
            try {
              return send(200, await accounts.approve(name, actor));
            } catch (err) {
              if (!/waiting for approval/.test((err as Error).message)) throw err;
            }
          }
          return send(409, { error: `no suspension of ${account} is waiting for approval` });
        }
      }
      send(404, { error: 'unknown route: GET /accounts, /accounts/<address>[/strikes|/history], POST /accounts/<address>/suspend|reinstate|approve, GET /breaker, POST /breaker/reset' });
    } catch (err) {
      send(/waiting for approval|no suspension/.test((err as Error).message) ? 409 : 500, { error: (err as Error).message });
    }
  }

  private caller(req: http.IncomingMessage): Caller | undefined {
    const named = this.opts.tokens ?? [];
    if (this.tokenless) return { scope: 'all' };
    // Digests of equal length, every token compared: neither a token's length nor which one matched
    // shows in the time taken.
    // The scheme is case-insensitive (RFC 9110 11.1): `bearer x` and `Bearer x` are the same token.
    const given = digest((req.headers.authorization ?? '').replace(/^bearer +/i, 'Bearer '));
    const is = (token: string) => timingSafeEqual(given, digest(`Bearer ${token}`));
    const matches = named.map((t) => is(t.token));
    const full = this.opts.token !== undefined && is(this.opts.token);
    // A named token first: should admin.token be the same secret, the narrower scope and the name win.
    const match = named.find((_, i) => matches[i]);
    if (match) return { scope: match.scope, name: match.name };
    return full ? { scope: 'all' } : undefined;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const caller = this.caller(req);
    const authorized = caller !== undefined;
    if (!caller && path !== '/healthz' && path !== '/readyz') {
      res.writeHead(401, { 'www-authenticate': 'Bearer', 'content-type': 'text/plain' }).end('bearer token required\n');
      return;
    }
    if (caller && this.accounts && (path.startsWith('/accounts') || path.startsWith('/breaker'))) {
      // A web page the operator has open could otherwise send a form here (no token needed on this host, and
      // a form's POST needs no permission across sites), or reach it by rebinding a name to 127.0.0.1.
      // Browsers name the page's origin on such a request; `douane accounts`, curl and scripts do not.
      const site = req.headers['sec-fetch-site'];
      if (req.headers.origin !== undefined || (site !== undefined && site !== 'none')) {
        res.writeHead(403, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `the accounts API does not answer requests a web page sends (Origin: ${req.headers.origin ?? '-'}, Sec-Fetch-Site: ${site ?? '-'}): use douane accounts, or a client that sends neither header` }, null, 2) + '\n');
        return;
      }
      // Without a token, whoever reaches the endpoint could suspend any customer: only the networks
      // listed (this host, by default: `douane accounts` runs here) may.
      const peer = req.socket.remoteAddress ?? '';
      // A request from this host to an address of its own (`douane accounts` with admin.address set to
      // the host's LAN address) comes from that same address.
      const thisHost = peer !== '' && peer === req.socket.localAddress;
      if (this.tokenless && !thisHost && !this.withoutTokenFrom.has(peer)) {
        res.writeHead(403, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `without a token the accounts API answers ${this.tokenlessFrom.map((c) => c.text).join(', ')} only, not ${peer}: set admin.token or admin.tokens, or list the network in admin.without_token_from` }, null, 2) + '\n');
        return;
      }
      await this.accountsRoute(req, res, path, this.accounts, caller);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    switch (path) {
      case '/metrics': {
        const body = await this.metrics.registry.metrics();
        res.writeHead(200, { 'content-type': this.metrics.registry.contentType }).end(body);
        return;
      }
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case '/readyz': {
        const results = await Promise.all(
          [...this.probes].map(async ([name, probe]) => [name, await probe().catch((e: Error) => ({ ok: false, detail: e.message }))] as const),
        );
        const ready = results.every(([, r]) => r.ok);
        const body = authorized ? { ready, checks: Object.fromEntries(results.map(([name, r]) => [name, r])) } : { ready };
        res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n');
        return;
      }
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz or /readyz\n');
    }
  }
}

/** Wraps a probe so that it runs at most once per `ttlMs` (a load balancer may poll often). */
export function cachedProbe(probe: ReadinessProbe, ttlMs: number): ReadinessProbe {
  let last: { at: number; result: Promise<ReadinessResult> } | undefined;
  return () => {
    const now = Date.now();
    if (!last || now - last.at >= ttlMs) last = { at: now, result: probe().catch((e: Error) => ({ ok: false, detail: e.message })) };
    return last.result;
  };
}

const SUSPEND_KEYS = ['action', 'for_ms', 'reason', 'reference'];

class TooLarge extends Error {}

/** Characters a terminal or a log viewer shows as nothing, or obeys: never part of an actor's name. */
const UNSEEN = /[\p{Cc}\p{Cf}\p{Default_Ignorable_Code_Point}\u2028\u2029]/gu;

async function readJson(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  // Decoded whole: a character whose bytes come in two TCP segments would be lost decoding each apart.
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > 65_536) throw new TooLarge('request body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  const parsed = JSON.parse(text) as unknown;
  // Anything but an object ("suspend_sending", [..], null) would read as a body that asks for nothing.
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error(`got ${Array.isArray(parsed) ? 'an array' : JSON.stringify(parsed)}`);
  return parsed as Record<string, unknown>;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'latin1').digest();
}

function decodedOr(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
