// The lifecycle API of a provider with its own account system, spoken as plain HTTP+JSON: one
// configurable request each to read an account's status, suspend it and reinstate it. Also the HTTP
// transport and metrics helpers the Zimbra adapter shares (one deadline per operation, bodies bounded,
// every failure turned into a LifecycleError that says whether to retry).
//
// Requests are signed with auth.hmac as src/lifecycle/signing.ts describes (method, path and body).

import http from 'node:http';
import https from 'node:https';
import type { Metrics } from '../metrics.js';
import { VERSION } from '../version.js';
import { signingHeaders } from './signing.js';
import { jsonEscape, PLACEHOLDERS, render, templateProblems, type Values } from './templates.js';
import { LifecycleError, type AccountInfo, type AccountStatus, type LifecycleApi, type SuspendOutcome } from './types.js';

// ------------------------------------------------------------------ shared transport

/** Answers larger than this are refused: an account's status is a few hundred bytes. */
const MAX_RESPONSE_BYTES = 1024 * 1024;

/** One deadline for one operation, whatever number of requests it takes (token, read, write, read back). */
export class Deadline {
  private readonly end: number;
  constructor(readonly timeoutMs: number) {
    this.end = performance.now() + timeoutMs;
  }

  remaining(): number {
    return Math.max(0, this.end - performance.now());
  }

  /** Waits for `promise`, but no longer than the deadline (the promise itself is not cancelled). */
  race<T>(promise: Promise<T>, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new LifecycleError('timeout', `${what}: no answer within ${this.timeoutMs} ms`, true)), this.remaining());
      promise.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }
}

export interface TlsOptions {
  ca?: string | Buffer;
  rejectUnauthorized?: boolean;
}

/**
 * A keep-alive agent (status is read often; a TLS handshake per read would cost more than the read).
 * Idle sockets are closed after a few seconds, before a server's own idle timeout can close one under a
 * request that reuses it.
 */
export function makeAgent(url: URL, tls: TlsOptions | undefined): http.Agent {
  const common = { keepAlive: true, maxSockets: 16, timeout: 4000, scheduling: 'lifo' as const };
  if (url.protocol === 'https:') return new https.Agent({ ...common, ca: tls?.ca, rejectUnauthorized: tls?.rejectUnauthorized ?? true });
  if (url.protocol === 'http:') return new http.Agent(common);
  throw new Error(`lifecycle API URL must be http: or https:, not ${url.protocol}`);
}

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** Where a request went, for error messages: origin and path only (a query string may hold a key). */
export function describeUrl(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

/**
 * One HTTP request under the operation's deadline. On the deadline the request is aborted (the socket is
 * destroyed, so nothing is left waiting). Never rejects with anything but a LifecycleError.
 */
export function sendHttp(
  url: URL,
  opts: { method: string; headers: Record<string, string>; body?: string; agent: http.Agent; deadline: Deadline; what: string },
): Promise<HttpAnswer> {
  return new Promise<HttpAnswer>((resolve, reject) => {
    const remaining = opts.deadline.remaining();
    if (remaining <= 0) {
      reject(new LifecycleError('timeout', `${opts.what}: no answer within ${opts.deadline.timeoutMs} ms`, true));
      return;
    }
    let settled = false;
    const finish = (err: LifecycleError | undefined, answer?: HttpAnswer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(answer!);
    };
    const body = opts.body === undefined ? undefined : Buffer.from(opts.body, 'utf8');
    const headers: Record<string, string> = { 'user-agent': `douane/${VERSION}`, ...opts.headers };
    if (body) headers['content-length'] = String(body.length);
    const mod = url.protocol === 'https:' ? https : http;
    const req = mod.request(url, { method: opts.method, headers, agent: opts.agent });
    const timer = setTimeout(() => {
      finish(new LifecycleError('timeout', `${opts.what}: no answer within ${opts.deadline.timeoutMs} ms`, true));
      req.destroy();
    }, remaining);
    req.on('error', (err: NodeJS.ErrnoException) => finish(connectionError(err, opts.what)));
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_RESPONSE_BYTES) {
          finish(new LifecycleError('protocol', `${opts.what}: answer larger than ${MAX_RESPONSE_BYTES} bytes`, false));
          req.destroy();
          return;
        }
        chunks.push(chunk);
      });
      res.on('end', () => finish(undefined, { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (err: NodeJS.ErrnoException) => finish(connectionError(err, opts.what)));
      res.on('close', () => {
        if (!res.complete) finish(new LifecycleError('unavailable', `${opts.what}: connection closed before the end of the answer`, true));
      });
    });
    req.end(body);
  });
}

/**
 * Refused connections, DNS failures, resets and TLS failures are all "unavailable, retry later": a
 * certificate problem is a configuration error, but it is also what a botched certificate renewal looks
 * like, and the request was never seen by the API.
 */
function connectionError(err: NodeJS.ErrnoException, what: string): LifecycleError {
  const tls = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY/.test(err.code ?? '');
  return new LifecycleError('unavailable', `${what}: ${tls ? 'TLS: ' : ''}${err.message}`, true);
}

/** Kind and retryability of an HTTP status that is not a success. */
export function httpStatusError(status: number, what: string): LifecycleError {
  const msg = `${what}: HTTP ${status}`;
  // 408 and 429 say "not now": worth retrying, unlike the other 4xx
  if (status >= 500 || status === 408 || status === 429) return new LifecycleError('unavailable', msg, true);
  if (status === 401 || status === 403) return new LifecycleError('auth', msg, false);
  if (status === 404) return new LifecycleError('not_found', msg, false);
  if (status >= 400) return new LifecycleError('refused', msg, false);
  // redirects are not followed: a moved API is a configuration error
  return new LifecycleError('protocol', msg, false);
}

/**
 * Runs one lifecycle operation and records it: its duration and its result (ok, or the error kind).
 * Whatever `fn` throws comes out as a LifecycleError (an unexpected error is a protocol error).
 */
export async function instrument<T>(metrics: Metrics, adapter: string, op: string, fn: () => Promise<T>): Promise<T> {
  const stop = metrics.lifecycleDuration.startTimer({ adapter, op });
  try {
    const result = await fn();
    metrics.lifecycleCalls.inc({ adapter, op, result: 'ok' });
    return result;
  } catch (err) {
    const e = err instanceof LifecycleError ? err : new LifecycleError('protocol', `${adapter} ${op}: ${(err as Error).message}`, false);
    metrics.lifecycleCalls.inc({ adapter, op, result: e.kind });
    throw e;
  } finally {
    stop();
  }
}

// ------------------------------------------------------------------ the HTTP adapter

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface HttpRequestTemplate {
  method: HttpMethod;
  /** URL template: placeholders are URL-encoded */
  url: string;
  /** JSON body template: placeholders are JSON-string-escaped (put them inside quotes) */
  body?: string;
}

export interface HttpLifecycleOptions {
  status: {
    method: 'GET' | 'POST';
    /** template with {account} */
    url: string;
    /** JSON template with {account} */
    body?: string;
    /** dotted path of the status in the JSON answer, e.g. "account.state" */
    statusField: string;
    /** the provider's values → ours; our own names (active, locked, suspended, …) map to themselves */
    statusMap?: Record<string, AccountStatus>;
    /** dotted path of an array of addresses (or one address) the account may send as */
    aliasesField?: string;
    /** dotted path of the plan name */
    planField?: string;
    /** dotted path of the account's own name, when the API also finds accounts by alias */
    nameField?: string;
  };
  /** templates with {account} {reference} {rule} {article} {summary} */
  suspend: HttpRequestTemplate;
  /** templates with {account} {reference} {by} */
  reinstate: HttpRequestTemplate;
  auth?: { bearer: string } | { hmac: { secret: string; header?: string } };
  /** deadline of one operation (a suspend includes reading the status back) */
  timeoutMs: number;
  tls?: TlsOptions;
  metrics: Metrics;
}

/** Statuses in which the account cannot send already: not Douane's to lock, nor later to unlock. */
const ALREADY_LOCKED: ReadonlySet<AccountStatus> = new Set<AccountStatus>(['locked', 'suspended', 'closed', 'pending']);
const OUR_STATUSES: ReadonlySet<string> = new Set<AccountStatus>(['active', 'locked', 'lockout', 'suspended', 'closed', 'maintenance', 'pending', 'unknown']);

export class HttpLifecycleApi implements LifecycleApi {
  readonly kind = 'http';
  private readonly agents = new Map<string, http.Agent>();

  constructor(private readonly opts: HttpLifecycleOptions) {
    for (const op of ['status', 'suspend', 'reinstate'] as const) checkTemplate(op, opts[op]);
  }

  status(account: string): Promise<AccountInfo> {
    return instrument(this.opts.metrics, this.kind, 'status', () => this.readStatus(account, new Deadline(this.opts.timeoutMs)));
  }

  suspend(account: string, reason: { reference: string; rule?: string; article?: string; summary: string }): Promise<SuspendOutcome> {
    return instrument(this.opts.metrics, this.kind, 'suspend', async (): Promise<SuspendOutcome> => {
      const deadline = new Deadline(this.opts.timeoutMs);
      // An account the provider has already suspended (non-payment), locked or closed is left as it is and
      // said to be: otherwise its lock would be taken for Douane's, and reinstating here would lift it.
      const before = await this.readStatus(account, deadline);
      if (ALREADY_LOCKED.has(before.status)) return 'already_locked';
      // Locked only from a state Douane knows it may change, as the Zimbra adapter does: a reinstatement
      // later sets the account active, which would wipe a state of the provider's own.
      if (before.status === 'maintenance') throw new LifecycleError('refused', `lifecycle http suspend: account ${account} is in maintenance; lock it afterwards`, true);
      if (before.status === 'unknown') {
        if (before.rawStatus === undefined) throw new LifecycleError('not_found', `lifecycle http suspend: no such account ${account}`, false);
        throw new LifecycleError('refused', `lifecycle http suspend: account ${account} has status ${JSON.stringify(before.rawStatus)}, which lifecycle.http.status.status_map does not name: Douane does not change it`, false);
      }
      const values = { account, reference: reason.reference, rule: reason.rule, article: reason.article, summary: reason.summary };
      const res = await this.send('suspend', this.opts.suspend, values, deadline);
      if (res.status === 404) throw new LifecycleError('not_found', `lifecycle http suspend: no such account ${account}`, false);
      // 409: some APIs answer "conflict" to suspending a suspended account; the read-back decides
      if (!isSuccess(res.status) && res.status !== 409) throw httpStatusError(res.status, `lifecycle http suspend`);
      // trust but verify: the provider may accept the request and not act on it
      const after = await this.readStatus(account, deadline);
      if (after.status !== 'locked' && after.status !== 'suspended') {
        throw new LifecycleError('refused', `lifecycle http suspend: ${res.status === 409 ? 'HTTP 409 and ' : ''}the account's status is ${after.status} afterwards`, false);
      }
      return 'locked';
    });
  }

  /**
   * Not confirmed by a read-back: reinstating lifts Douane's suspension, and the account may rightly stay
   * suspended for another reason (non-payment).
   */
  reinstate(account: string, reason: { reference: string; by: string }): Promise<void> {
    return instrument(this.opts.metrics, this.kind, 'reinstate', async () => {
      const res = await this.send('reinstate', this.opts.reinstate, { account, reference: reason.reference, by: reason.by }, new Deadline(this.opts.timeoutMs));
      if (res.status === 404) throw new LifecycleError('not_found', `lifecycle http reinstate: no such account ${account}`, false);
      if (!isSuccess(res.status)) throw httpStatusError(res.status, `lifecycle http reinstate`);
    });
  }

  private async readStatus(account: string, deadline: Deadline): Promise<AccountInfo> {
    const s = this.opts.status;
    const res = await this.send('status', s, { account }, deadline);
    if (res.status === 404) return { status: 'unknown' };
    if (!isSuccess(res.status)) throw httpStatusError(res.status, 'lifecycle http status');
    let doc: unknown;
    try {
      doc = JSON.parse(res.body);
    } catch {
      throw new LifecycleError('protocol', 'lifecycle http status: the answer is not JSON', false);
    }
    const raw = pick(doc, s.statusField);
    if (typeof raw !== 'string' && typeof raw !== 'number' && typeof raw !== 'boolean') {
      throw new LifecycleError('protocol', `lifecycle http status: no ${s.statusField} in the answer`, false);
    }
    const info: AccountInfo = { status: mapStatus(String(raw), s.statusMap) };
    if (info.status === 'unknown') info.rawStatus = String(raw);
    if (s.aliasesField) {
      const aliases = pick(doc, s.aliasesField);
      if (typeof aliases === 'string') info.aliases = [aliases];
      else if (Array.isArray(aliases)) info.aliases = aliases.filter((a): a is string => typeof a === 'string');
    }
    if (s.nameField) {
      const name = pick(doc, s.nameField);
      if (typeof name === 'string' && name) info.name = name;
    }
    if (s.planField) {
      const plan = pick(doc, s.planField);
      if (typeof plan === 'string' || typeof plan === 'number') info.plan = String(plan);
    }
    return info;
  }

  private send(op: keyof typeof PLACEHOLDERS, t: HttpRequestTemplate, values: Values, deadline: Deadline): Promise<HttpAnswer> {
    // "." and ".." stay as they are once URL-encoded, and a URL takes them as steps in its path
    // (".../mailboxes/../lock" is ".../lock", another endpoint): no account is named so, none is asked for.
    const inUrl = [...t.url.matchAll(/\{(\w+)\}/g)].map((m) => values[m[1]!]);
    if (inUrl.some((v) => v === '.' || v === '..')) return Promise.resolve({ status: 404, headers: {}, body: '' });
    const url = new URL(render(t.url, values, encodeURIComponent));
    const body = t.body === undefined ? undefined : render(t.body, values, jsonEscape);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json; charset=utf-8';
    const auth = this.opts.auth;
    if (auth && 'bearer' in auth) headers.authorization = `Bearer ${auth.bearer}`;
    if (auth && 'hmac' in auth) Object.assign(headers, signingHeaders(auth.hmac.secret, t.method, url, body ?? '', auth.hmac.header));
    return sendHttp(url, { method: t.method, headers, body, agent: this.agent(url), deadline, what: `lifecycle http ${op} (${t.method} ${describeUrl(url)})` });
  }

  private agent(url: URL): http.Agent {
    let agent = this.agents.get(url.origin);
    if (!agent) {
      agent = makeAgent(url, this.opts.tls);
      this.agents.set(url.origin, agent);
    }
    return agent;
  }
}


function isSuccess(status: number): boolean {
  return status >= 200 && status < 300;
}

/**
 * A provider value the map does not name and that is not one of ours is "unknown": Douane does not
 * guess what an unfamiliar state allows.
 */
function mapStatus(value: string, map: Record<string, AccountStatus> | undefined): AccountStatus {
  const mapped = map && Object.hasOwn(map, value) ? map[value] : undefined;
  if (mapped) return mapped;
  const lower = value.toLowerCase();
  return OUR_STATUSES.has(lower) ? (lower as AccountStatus) : 'unknown';
}

function pick(doc: unknown, path: string): unknown {
  let v: unknown = doc;
  for (const part of path.split('.')) {
    if (v === null || typeof v !== 'object' || !Object.prototype.hasOwnProperty.call(v, part)) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

/** A typo in a placeholder would otherwise be sent as is: refuse it when the adapter is built. */
function checkTemplate(op: keyof typeof PLACEHOLDERS, t: { url: string; body?: string }): void {
  const [first] = templateProblems(op, t);
  if (first) throw new Error(`lifecycle http: the ${op} ${first.where} ${first.message}`);
}
