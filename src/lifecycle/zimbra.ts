// Zimbra's admin SOAP API as a lifecycle API: reads an account's status and aliases (GetAccountRequest),
// locks and reactivates it (ModifyAccountRequest on zimbraAccountStatus). Speaks SOAP 1.2 XML as Zimbra
// does, with one admin token shared by every call and renewed before it expires. It never sets an
// account "closed": that status is Zimbra's end of contract, and a mistake there is not undone by
// reactivating. Every operation has one deadline, whatever number of requests it takes.

import type http from 'node:http';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import type { Metrics } from '../metrics.js';
import { Deadline, describeUrl, instrument, makeAgent, sendHttp, type TlsOptions } from './http.js';
import { LifecycleError, type AccountInfo, type AccountStatus, type LifecycleApi, type SuspendOutcome } from './types.js';

export interface ZimbraAdminOptions {
  /** the admin SOAP endpoint, e.g. https://zimbra.example:7071/service/admin/soap */
  url: string;
  adminUser: string;
  adminPassword: string;
  /** deadline of one operation (status, suspend, reinstate), every request it makes included */
  timeoutMs: number;
  tls?: TlsOptions;
  metrics: Metrics;
  /** clock for the token's lifetime (ms since epoch); tests move it */
  now?: () => number;
  /** COS id → plan name for AccountInfo.plan; without an entry, the plan is the COS id itself */
  cosPlans?: Record<string, string>;
}

const SOAP12_NS = 'http://www.w3.org/2003/05/soap-envelope';
const ADMIN_NS = 'urn:zimbraAdmin';
const ZIMBRA_NS = 'urn:zimbra';
const ACCOUNT_ATTRS = 'zimbraAccountStatus,zimbraMailAlias,zimbraCOSId';
/** Renew the admin token when this share of its lifetime has passed. */
const RENEW_AT = 0.8;
/** If an AuthResponse ever lacks a lifetime: Zimbra's default admin token lives 12 h; assume far less. */
const DEFAULT_LIFETIME_MS = 60 * 60 * 1000;

/** Zimbra's zimbraAccountStatus values, which keep their names. */
const ZIMBRA_STATUSES: ReadonlySet<string> = new Set(['active', 'locked', 'lockout', 'closed', 'maintenance', 'pending']);
/** Faults that mean "this token is no good": get a new one and try once more. */
const TOKEN_FAULTS: ReadonlySet<string> = new Set(['service.AUTH_EXPIRED', 'service.AUTH_REQUIRED']);
const NO_SUCH_ACCOUNT = 'account.NO_SUCH_ACCOUNT';

/** A fault as Zimbra sent it; turned into a LifecycleError by `faultError` at the end of an operation. */
class SoapFault extends Error {
  constructor(
    readonly code: string,
    readonly reason: string,
    /** soap:Receiver: Zimbra's own failure, as opposed to soap:Sender (the request's) */
    readonly receiver: boolean,
    readonly request: string,
  ) {
    super(`Zimbra ${request}: ${code}: ${reason}`);
    this.name = 'SoapFault';
  }
}

interface ZimbraAccount {
  id: string;
  name: string;
  /** zimbraAccountStatus as Zimbra wrote it (lower case), '' when absent */
  rawStatus: string;
  status: AccountStatus;
  aliases: string[];
  cosId?: string;
}

export class ZimbraAdminApi implements LifecycleApi {
  readonly kind = 'zimbra';
  private readonly url: URL;
  private readonly agent: http.Agent;
  private readonly now: () => number;
  private token: { value: string; renewAt: number } | undefined;
  private authInFlight: Promise<string> | undefined;
  /**
   * Account ids by lower-case name. Every write is preceded by a read of the current status (to stay
   * idempotent), which brings the id anyway; the cache serves the read-back after the write, by id, so
   * that what is checked is the very account that was modified.
   */
  private readonly ids = new Map<string, string>();

  constructor(private readonly opts: ZimbraAdminOptions) {
    this.url = new URL(opts.url);
    this.agent = makeAgent(this.url, opts.tls);
    this.now = opts.now ?? Date.now;
  }

  status(account: string): Promise<AccountInfo> {
    return this.operation('status', async (deadline) => {
      if (!isPlausibleName(account)) return { status: 'unknown' };
      try {
        return this.info(await this.getAccount('name', account, deadline));
      } catch (err) {
        if (err instanceof SoapFault && err.code === NO_SUCH_ACCOUNT) return { status: 'unknown' };
        throw err;
      }
    });
  }

  /**
   * Locks the account. Already locked, closed or pending: nothing to do (none can log in; a closed account
   * is never touched, and a pending one belongs to provisioning: locked here, a reinstatement would make
   * it active before its time). In maintenance (a mailbox move, which restores the status it saw at its start):
   * refused for now, retryable.
   */
  suspend(account: string, _reason: { reference: string; rule?: string; article?: string; summary: string }): Promise<SuspendOutcome> {
    return this.operation('suspend', async (deadline): Promise<SuspendOutcome> => {
      const acct = await this.existingAccount(account, deadline);
      switch (acct.status) {
        case 'locked':
        case 'closed':
        case 'pending':
          return 'already_locked';
        case 'active':
        case 'lockout':
          await this.setStatus(acct, 'locked', deadline);
          return 'locked';
        case 'maintenance':
          throw new LifecycleError('refused', `Zimbra account ${account} is in maintenance; lock it afterwards`, true);
        default:
          throw new LifecycleError('refused', `Zimbra account ${account} has status "${acct.rawStatus}", which Douane does not change`, false);
      }
    });
  }

  /**
   * Back to active, from locked only: the other statuses were not set by Douane (closed is the end of a
   * contract, lockout expires by itself, maintenance and pending belong to other processes).
   */
  reinstate(account: string, _reason: { reference: string; by: string }): Promise<void> {
    return this.operation('reinstate', async (deadline) => {
      const acct = await this.existingAccount(account, deadline);
      switch (acct.status) {
        case 'active':
          return;
        case 'locked':
          await this.setStatus(acct, 'active', deadline);
          return;
        case 'maintenance':
          throw new LifecycleError('refused', `Zimbra account ${account} is in maintenance; reinstate it afterwards`, true);
        default:
          throw new LifecycleError('refused', `Zimbra account ${account} has status "${acct.rawStatus}"; only a locked account is reinstated`, false);
      }
    });
  }

  // ---------------------------------------------------------------- account requests

  private async existingAccount(account: string, deadline: Deadline): Promise<ZimbraAccount> {
    if (!isPlausibleName(account)) throw new LifecycleError('not_found', `no Zimbra account can be named ${JSON.stringify(account)}`, false);
    try {
      return await this.getAccount('name', account, deadline);
    } catch (err) {
      if (err instanceof SoapFault && err.code === NO_SUCH_ACCOUNT) throw new LifecycleError('not_found', `no Zimbra account ${account}`, false);
      throw err;
    }
  }

  private async getAccount(by: 'name' | 'id', key: string, deadline: Deadline): Promise<ZimbraAccount> {
    const body = `<GetAccountRequest xmlns="${ADMIN_NS}" attrs="${ACCOUNT_ATTRS}"><account by="${by}">${xmlEscape(key)}</account></GetAccountRequest>`;
    const res = await this.call('GetAccountRequest', body, deadline);
    const el = res.children.find((c) => c.local === 'account');
    const id = el?.attrs.id;
    const name = el?.attrs.name;
    if (!el || !id || !name) throw new LifecycleError('protocol', 'Zimbra GetAccountResponse without an account, its id or its name', false);
    const attrs = el.children.filter((c) => c.local === 'a');
    const values = (n: string) => attrs.filter((a) => a.attrs.n === n).map((a) => a.text.trim());
    const rawStatus = (values('zimbraAccountStatus')[0] ?? '').toLowerCase();
    // a status this code does not know (a later Zimbra's, or none at all) is 'unknown': Douane does not
    // guess what it allows
    const status: AccountStatus = ZIMBRA_STATUSES.has(rawStatus) ? (rawStatus as AccountStatus) : 'unknown';
    const cosId = values('zimbraCOSId')[0];
    if (by === 'name') this.ids.set(key.toLowerCase(), id);
    return { id, name, rawStatus, status, aliases: values('zimbraMailAlias').filter(Boolean), ...(cosId ? { cosId } : {}) };
  }

  private info(acct: ZimbraAccount): AccountInfo {
    const info: AccountInfo = { status: acct.status, id: acct.id, aliases: acct.aliases, name: acct.name };
    if (acct.cosId) info.plan = this.opts.cosPlans?.[acct.cosId] ?? acct.cosId;
    return info;
  }

  /** Writes the status, then reads it back by id: Zimbra may accept a modification and not keep it. */
  private async setStatus(acct: ZimbraAccount, status: 'locked' | 'active', deadline: Deadline): Promise<void> {
    try {
      await this.call('ModifyAccountRequest', modifyAccountStatusRequest(acct.id, status), deadline);
    } catch (err) {
      if (err instanceof SoapFault && err.code === NO_SUCH_ACCOUNT) {
        this.ids.delete(acct.name.toLowerCase());
        throw new LifecycleError('not_found', `Zimbra account ${acct.name} disappeared before it could be modified`, false);
      }
      throw err;
    }
    const id = this.ids.get(acct.name.toLowerCase()) ?? acct.id;
    const after = await this.getAccount('id', id, deadline);
    if (after.status !== status) {
      throw new LifecycleError('refused', `Zimbra accepted setting ${acct.name} ${status}, but its status is "${after.rawStatus}" afterwards`, false);
    }
  }

  // ---------------------------------------------------------------- SOAP and the admin token

  /** Runs one public operation under its deadline; records it; turns faults into LifecycleErrors. */
  private operation<T>(op: string, fn: (deadline: Deadline) => Promise<T>): Promise<T> {
    return instrument(this.opts.metrics, this.kind, op, async () => {
      try {
        return await fn(new Deadline(this.opts.timeoutMs));
      } catch (err) {
        throw this.lifecycleError(err);
      }
    });
  }

  /** An authenticated request: one new token and one more try if Zimbra says the token is no good. */
  private async call(request: string, bodyXml: string, deadline: Deadline): Promise<XmlElement> {
    const token = await this.getToken(deadline);
    try {
      return await this.soap(request, bodyXml, token, deadline);
    } catch (err) {
      if (!(err instanceof SoapFault && TOKEN_FAULTS.has(err.code))) throw err;
      if (this.token?.value === token) this.token = undefined;
    }
    const fresh = await this.getToken(deadline);
    try {
      return await this.soap(request, bodyXml, fresh, deadline);
    } catch (err) {
      if (err instanceof SoapFault && TOKEN_FAULTS.has(err.code)) {
        throw new LifecycleError('auth', `Zimbra ${request}: a fresh admin token was refused too (${err.code})`, false);
      }
      throw err;
    }
  }

  /** The cached token, or a new one; concurrent callers share one AuthRequest. */
  private getToken(deadline: Deadline): Promise<string> {
    const t = this.token;
    if (t && this.now() < t.renewAt) return Promise.resolve(t.value);
    if (!this.authInFlight) {
      // its own deadline: a caller joining late must not cut short a request others are waiting for
      const p = instrument(this.opts.metrics, this.kind, 'auth', () => this.authenticate(new Deadline(this.opts.timeoutMs)).catch((err: unknown) => Promise.reject(this.lifecycleError(err))));
      this.authInFlight = p.finally(() => {
        this.authInFlight = undefined;
      });
      this.authInFlight.catch(() => {});
    }
    return deadline.race(this.authInFlight, 'Zimbra AuthRequest');
  }

  private async authenticate(deadline: Deadline): Promise<string> {
    const issuedAt = this.now();
    const body = `<AuthRequest xmlns="${ADMIN_NS}"><name>${xmlEscape(this.opts.adminUser)}</name><password>${xmlEscape(this.opts.adminPassword)}</password></AuthRequest>`;
    const res = await this.soap('AuthRequest', body, undefined, deadline);
    const value = res.children.find((c) => c.local === 'authToken')?.text.trim();
    if (!value) throw new LifecycleError('protocol', 'Zimbra AuthResponse without an authToken', false);
    const lifetime = Number(res.children.find((c) => c.local === 'lifetime')?.text.trim());
    const lifetimeMs = Number.isFinite(lifetime) && lifetime > 0 ? lifetime : DEFAULT_LIFETIME_MS;
    this.token = { value, renewAt: issuedAt + lifetimeMs * RENEW_AT };
    return value;
  }

  /** One SOAP exchange: the response element (e.g. GetAccountResponse), or a SoapFault, or a LifecycleError. */
  private async soap(request: string, bodyXml: string, token: string | undefined, deadline: Deadline): Promise<XmlElement> {
    // nosession: an admin script has no use for a server-side session (Zimbra would keep one per token)
    const context = `<context xmlns="${ZIMBRA_NS}">${token === undefined ? '' : `<authToken>${xmlEscape(token)}</authToken>`}<nosession/></context>`;
    const envelope = `<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="${SOAP12_NS}"><soap:Header>${context}</soap:Header><soap:Body>${bodyXml}</soap:Body></soap:Envelope>`;
    const what = `Zimbra ${request} (${describeUrl(this.url)})`;
    const res = await sendHttp(this.url, {
      method: 'POST',
      headers: { 'content-type': 'application/soap+xml; charset=utf-8', accept: 'application/soap+xml, text/xml' },
      body: envelope,
      agent: this.agent,
      deadline,
      what,
    });
    const doc = parseXml(res.body);
    const soapBody = doc?.ns === SOAP12_NS && doc.local === 'Envelope' ? doc.children.find((c) => c.ns === SOAP12_NS && c.local === 'Body') : undefined;
    // Zimbra answers a fault with HTTP 500 and a SOAP envelope: the fault decides, not the status
    const fault = soapBody?.children.find((c) => c.ns === SOAP12_NS && c.local === 'Fault');
    if (fault) throw parseFault(fault, request);
    if (soapBody && res.status === 200) {
      const expected = request.replace(/Request$/, 'Response');
      const el = soapBody.children[0];
      if (el?.local !== expected) throw new LifecycleError('protocol', `${what}: expected ${expected}, got ${el?.local ?? 'an empty body'}`, false);
      return el;
    }
    // never the body in a message: an AuthResponse holds the token
    if (res.status >= 500) throw new LifecycleError('unavailable', `${what}: HTTP ${res.status} without a SOAP fault`, true);
    if (res.status === 401 || res.status === 403) throw new LifecycleError('auth', `${what}: HTTP ${res.status} without a SOAP fault`, false);
    throw new LifecycleError('protocol', `${what}: HTTP ${res.status} and no SOAP 1.2 answer`, false);
  }

  /** Faults and stray errors as LifecycleErrors, with the admin password and token kept out of messages. */
  private lifecycleError(err: unknown): LifecycleError {
    const e = err instanceof SoapFault ? faultError(err) : err instanceof LifecycleError ? err : new LifecycleError('protocol', `Zimbra: ${(err as Error).message}`, false);
    const secrets = [this.opts.adminPassword, this.token?.value].filter((s): s is string => !!s && s.length >= 4);
    if (!secrets.some((s) => e.message.includes(s))) return e;
    const message = secrets.reduce((m, s) => m.split(s).join('***'), e.message);
    return new LifecycleError(e.kind, message, e.retryable);
  }
}

/**
 * The only way a ModifyAccountRequest is built. It refuses "closed" in any spelling: closing is Zimbra's
 * end of contract, never Douane's to decide, whatever a future caller passes.
 */
export function modifyAccountStatusRequest(id: string, status: 'locked' | 'active'): string {
  const value = String(status).trim().toLowerCase();
  if (value === 'closed' || (value !== 'locked' && value !== 'active')) {
    throw new LifecycleError('refused', `refusing to set a Zimbra account's status to "${String(status)}": Douane only locks and reactivates`, false);
  }
  return `<ModifyAccountRequest xmlns="${ADMIN_NS}"><id>${xmlEscape(id)}</id><a n="zimbraAccountStatus">${value}</a></ModifyAccountRequest>`;
}

/**
 * Fault codes to error kinds. Retryable: the ones where Zimbra itself failed (service.FAILURE is its
 * catch-all when LDAP or the database are down; any other soap:Receiver fault). Not retryable: bad
 * credentials or rights, a missing account, a request Zimbra could not read (a bug here: sending it again
 * changes nothing), and any other soap:Sender fault (Zimbra understood and said no).
 */
function faultError(f: SoapFault): LifecycleError {
  const msg = `Zimbra ${f.request}: ${f.code}: ${f.reason.slice(0, 300)}`;
  switch (f.code) {
    case 'account.AUTH_FAILED':
    case 'service.PERM_DENIED':
    case 'service.AUTH_EXPIRED':
    case 'service.AUTH_REQUIRED':
      return new LifecycleError('auth', msg, false);
    case NO_SUCH_ACCOUNT:
      return new LifecycleError('not_found', msg, false);
    case 'service.INVALID_REQUEST':
    case 'service.PARSE_ERROR':
    case 'service.UNKNOWN_DOCUMENT':
      return new LifecycleError('protocol', msg, false);
    case 'service.FAILURE':
    case 'service.TEMPORARILY_UNAVAILABLE':
    case 'account.MAINTENANCE_MODE':
      return new LifecycleError('unavailable', msg, true);
    default:
      return f.receiver ? new LifecycleError('unavailable', msg, true) : new LifecycleError('refused', msg, false);
  }
}

function parseFault(fault: XmlElement, request: string): SoapFault {
  const child = (el: XmlElement | undefined, local: string) => el?.children.find((c) => c.local === local);
  const value = child(child(fault, 'Code'), 'Value')?.text.trim() ?? '';
  const reason = child(child(fault, 'Reason'), 'Text')?.text.trim() ?? '';
  const code = child(child(child(fault, 'Detail'), 'Error'), 'Code')?.text.trim() || 'soap.UNKNOWN';
  return new SoapFault(code, reason, /(^|:)Receiver$/.test(value), request);
}

/** Zimbra account names are addresses: no control characters, no spaces, no angle brackets. */
function isPlausibleName(account: string): boolean {
  return account.length > 0 && account.length <= 320 && !/[\x00-\x20\x7f<>]/.test(account);
}

export function xmlEscape(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

// ---------------------------------------------------------------- a namespace-aware reading of XML

export interface XmlElement {
  /** namespace URI ('' for none) */
  ns: string;
  local: string;
  /** attributes other than namespace declarations, by qualified name */
  attrs: Record<string, string>;
  children: XmlElement[];
  /** the element's own text (CDATA included), untrimmed */
  text: string;
}

const parser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  htmlEntities: true,
});

/** The document element, or undefined when the text is not well-formed XML (or has a DOCTYPE, which no SOAP message may). */
export function parseXml(text: string): XmlElement | undefined {
  if (/<!DOCTYPE/i.test(text) || XMLValidator.validate(text) !== true) return undefined;
  let nodes: unknown;
  try {
    nodes = parser.parse(text);
  } catch {
    return undefined;
  }
  return build(nodes as Node[], new Map([['xml', 'http://www.w3.org/XML/1998/namespace']])).elements[0];
}

type Node = Record<string, unknown>;

function build(nodes: Node[], scope: Map<string, string>): { elements: XmlElement[]; text: string } {
  const elements: XmlElement[] = [];
  let text = '';
  for (const node of nodes) {
    const key = Object.keys(node).find((k) => k !== ':@');
    if (key === undefined) continue;
    if (key === '#text') {
      text += String(node[key]);
      continue;
    }
    if (key.startsWith('?') || key.startsWith('!') || key.startsWith('#')) continue;
    const raw = (node[':@'] ?? {}) as Record<string, string>;
    let inner = scope;
    const attrs: Record<string, string> = {};
    for (const [k, v] of Object.entries(raw)) {
      if (k === 'xmlns' || k.startsWith('xmlns:')) {
        if (inner === scope) inner = new Map(scope);
        inner.set(k === 'xmlns' ? '' : k.slice(6), String(v));
      } else {
        attrs[k] = String(v);
      }
    }
    const colon = key.indexOf(':');
    const prefix = colon >= 0 ? key.slice(0, colon) : '';
    const content = build((node[key] ?? []) as Node[], inner);
    elements.push({ ns: inner.get(prefix) ?? '', local: colon >= 0 ? key.slice(colon + 1) : key, attrs, children: content.elements, text: content.text });
  }
  return { elements, text };
}
