// A fake Zimbra admin SOAP server for the lifecycle tests. It checks every request against Zimbra's wire
// format (SOAP 1.2 envelope, body element in urn:zimbraAdmin, admin token in Header/context in urn:zimbra,
// ModifyAccountRequest by account id) and answers like Zimbra, faults included (HTTP 500 and a SOAP 1.2
// fault with the Zimbra code in Detail/Error). Failures can be injected at runtime: expired tokens, SOAP
// faults, bare HTTP 500s, requests never answered, the server down. It reads XML with its own code, not
// the adapter's, so that a mistake in one is not hidden by the same mistake in the other.

import { randomUUID } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { makeSelfSigned } from '../../src/smtp/tls.js';

const SOAP12 = 'http://www.w3.org/2003/05/soap-envelope';
const ADMIN = 'urn:zimbraAdmin';
const ZIMBRA = 'urn:zimbra';
const STATUSES = new Set(['active', 'locked', 'lockout', 'closed', 'maintenance', 'pending']);

export interface FakeAccount {
  name: string;
  id: string;
  status: string;
  aliases: string[];
  cosId?: string;
}

export type FailKind = 'fault' | '500' | 'timeout' | 'down';

export interface Modification {
  id: string;
  name: string;
  attrs: Record<string, string[]>;
}

export interface FakeZimbraOptions {
  adminUser?: string;
  adminPassword?: string;
  /** lifetime of the tokens issued, in ms (AuthResponse/lifetime) */
  tokenLifetimeMs?: number;
  /** serve HTTPS with a throwaway self-signed certificate (its PEM is `cert`) */
  tls?: boolean;
  /** zimbraDefaultDomainName: a name without "@" is looked up in this domain, as Zimbra does */
  defaultDomain?: string;
}

interface El {
  ns: string;
  local: string;
  attrs: Record<string, string>;
  children: El[];
  text: string;
}

class Fault extends Error {
  constructor(
    readonly code: string,
    readonly reason: string,
    readonly receiver = false,
  ) {
    super(reason);
  }
}

const parser = new XMLParser({ preserveOrder: true, ignoreAttributes: false, attributeNamePrefix: '', parseTagValue: false, parseAttributeValue: false, trimValues: false });

export class FakeZimbra {
  adminUser: string;
  adminPassword: string;
  tokenLifetimeMs: number;
  /** accepts ModifyAccountRequest but keeps the old values (as when a server-side hook reverts them) */
  ignoreModifications = false;
  /** refuses every token, fresh ones included (service.AUTH_REQUIRED) */
  rejectAllTokens = false;
  readonly accounts: FakeAccount[] = [];
  /** requests received, by body element (AuthRequest, GetAccountRequest, …; "invalid" when unreadable) */
  readonly requests: Record<string, number> = {};
  /** faults sent, by Zimbra code */
  readonly faults: Record<string, number> = {};
  /** what was wrong with each request refused as malformed: a correct client leaves this empty */
  readonly invalid: string[] = [];
  /** every ModifyAccountRequest applied (or ignored), in order */
  readonly modifications: Modification[] = [];
  /** raw request bodies, in order */
  readonly bodies: string[] = [];
  /** the certificate (PEM) when serving TLS */
  cert: Buffer | undefined;
  port = 0;

  private server!: http.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly hanging = new Set<http.ServerResponse>();
  private readonly tokens = new Map<string, { expiresAt: number; revoked: boolean }>();
  private failures: Exclude<FailKind, 'down'>[] = [];
  private listening = false;

  private constructor(private readonly opts: FakeZimbraOptions) {
    this.adminUser = opts.adminUser ?? 'admin@zimbra.test';
    this.adminPassword = opts.adminPassword ?? 'admin-secret';
    this.tokenLifetimeMs = opts.tokenLifetimeMs ?? 12 * 3600 * 1000;
  }

  static async start(opts: FakeZimbraOptions = {}): Promise<FakeZimbra> {
    const z = new FakeZimbra(opts);
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => z.handle(req, res);
    if (opts.tls) {
      const material = makeSelfSigned('zimbra.test');
      z.cert = material.cert;
      z.server = https.createServer({ key: material.key, cert: material.cert }, handler);
    } else {
      z.server = http.createServer(handler);
    }
    z.server.on('connection', (s: net.Socket) => {
      z.sockets.add(s);
      s.on('close', () => z.sockets.delete(s));
    });
    z.server.on('secureConnection', (s: net.Socket) => {
      z.sockets.add(s);
      s.on('close', () => z.sockets.delete(s));
    });
    await z.listen(0);
    return z;
  }

  get url(): string {
    return `${this.cert ? 'https' : 'http'}://127.0.0.1:${this.port}/service/admin/soap`;
  }

  addAccount(a: { name: string; status?: string; aliases?: string[]; id?: string; cosId?: string }): FakeAccount {
    const acct: FakeAccount = { name: a.name, id: a.id ?? randomUUID(), status: a.status ?? 'active', aliases: a.aliases ?? [], ...(a.cosId ? { cosId: a.cosId } : {}) };
    this.accounts.push(acct);
    return acct;
  }

  /** By its name or any of its aliases; a bare name in the default domain (Zimbra's account lookup by name). */
  account(name: string): FakeAccount | undefined {
    const n = (!name.includes('@') && this.opts.defaultDomain ? `${name}@${this.opts.defaultDomain}` : name).toLowerCase();
    return this.accounts.find((a) => a.name.toLowerCase() === n || a.aliases.some((x) => x.toLowerCase() === n));
  }

  count(request: string): number {
    return this.requests[request] ?? 0;
  }

  /** Tokens issued so far are refused from now on with service.AUTH_EXPIRED. */
  expireTokens(): void {
    for (const t of this.tokens.values()) t.revoked = true;
  }

  /**
   * The next `n` requests fail: 'fault' (SOAP fault service.FAILURE), '500' (HTTP 500, not SOAP),
   * 'timeout' (never answered). 'down' stops listening now, whatever `n` (connections refused) until up().
   */
  failNext(n: number, kind: FailKind): void | Promise<void> {
    if (kind === 'down') return this.down();
    for (let i = 0; i < n; i++) this.failures.push(kind);
  }

  /** Stops listening and drops every connection: new connections are refused. */
  async down(): Promise<void> {
    if (!this.listening) return;
    this.listening = false;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.dropConnections();
    await closed;
  }

  /** Listens again, on the same port. */
  async up(): Promise<void> {
    if (!this.listening) await this.listen(this.port);
  }

  /** Requests held open by 'timeout' whose connection the client has not closed yet. */
  get hangingRequests(): number {
    return this.hanging.size;
  }

  async stop(): Promise<void> {
    await this.down();
  }

  private async listen(port: number): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.server.address() as net.AddressInfo).port;
    this.listening = true;
  }

  private dropConnections(): void {
    for (const res of this.hanging) res.destroy();
    this.hanging.clear();
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  // ---------------------------------------------------------------- requests

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      this.bodies.push(body);
      try {
        this.answer(req, res, body);
      } catch (err) {
        // a bug in the fake must not take the test process down: answer like Zimbra's catch-all
        this.sendFault(res, err instanceof Fault ? err : new Fault('service.FAILURE', `system failure: ${(err as Error).message}`, true));
      }
    });
  }

  private answer(req: http.IncomingMessage, res: http.ServerResponse, body: string): void {
    if (req.method !== 'POST' || req.url !== '/service/admin/soap') {
      this.invalid.push(`${req.method} ${req.url}`);
      res.writeHead(404, { 'content-type': 'text/html' }).end('<html><body>HTTP ERROR 404</body></html>');
      return;
    }
    const { request, header } = this.readEnvelope(req, body);
    const type = request.local;
    this.requests[type] = (this.requests[type] ?? 0) + 1;

    const failure = this.failures.shift();
    if (failure === 'fault') throw new Fault('service.FAILURE', 'system failure: injected by the test', true);
    if (failure === '500') {
      res.writeHead(500, { 'content-type': 'text/html' }).end('<html><body><h2>HTTP ERROR 500</h2>Server Error</body></html>');
      return;
    }
    if (failure === 'timeout') {
      this.hanging.add(res);
      res.on('close', () => this.hanging.delete(res));
      return;
    }

    if (type === 'AuthRequest') return this.send(res, this.auth(request));
    this.checkToken(header);
    if (type === 'GetAccountRequest') return this.send(res, this.getAccount(request));
    if (type === 'ModifyAccountRequest') return this.send(res, this.modifyAccount(request));
    throw new Fault('service.UNKNOWN_DOCUMENT', `unknown document: ${type}`);
  }

  /** The checks Zimbra's SoapEngine makes before dispatching, as faults like its own. */
  private readEnvelope(req: http.IncomingMessage, body: string): { request: El; header: El | undefined } {
    const invalid = (why: string): never => {
      this.invalid.push(why);
      this.requests.invalid = (this.requests.invalid ?? 0) + 1;
      throw new Fault('service.INVALID_REQUEST', `invalid request: ${why}`);
    };
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/soap\+xml\s*;\s*charset=utf-8$/i.test(type)) invalid(`Content-Type ${JSON.stringify(type)} is not SOAP 1.2 (application/soap+xml; charset=utf-8)`);
    if (/<!DOCTYPE/i.test(body)) invalid('DOCTYPE is not allowed');
    const valid = XMLValidator.validate(body);
    if (valid !== true) invalid(`malformed XML: ${valid.err.msg}`);
    let root: El;
    try {
      root = toTree(parser.parse(body) as Node[]);
    } catch (err) {
      return invalid((err as Error).message);
    }
    if (root.ns !== SOAP12 || root.local !== 'Envelope') invalid(`document element {${root.ns}}${root.local} is not a SOAP 1.2 Envelope`);
    const parts = root.children;
    const header = parts.find((c) => c.local === 'Header');
    const soapBody = parts.find((c) => c.local === 'Body');
    if (!soapBody || soapBody.ns !== SOAP12) return invalid('no SOAP 1.2 Body');
    if (header && header.ns !== SOAP12) invalid('Header not in the SOAP 1.2 namespace');
    if (parts.some((c) => c !== header && c !== soapBody)) invalid('unexpected element in the Envelope');
    if (soapBody.children.length !== 1) invalid(`the Body holds ${soapBody.children.length} elements, not one`);
    const request = soapBody.children[0]!;
    if (request.ns !== ADMIN) invalid(`${request.local} is in namespace "${request.ns}", not ${ADMIN}`);
    return { request, header };
  }

  private checkToken(header: El | undefined): void {
    const context = header?.children.find((c) => c.local === 'context' && c.ns === ZIMBRA);
    const token = context?.children.find((c) => c.local === 'authToken' && c.ns === ZIMBRA)?.text;
    if (!token) throw new Fault('service.AUTH_REQUIRED', 'no valid authtoken present');
    const t = this.tokens.get(token);
    if (!t || this.rejectAllTokens) throw new Fault('service.AUTH_REQUIRED', 'no valid authtoken present');
    if (t.revoked || Date.now() >= t.expiresAt) throw new Fault('service.AUTH_EXPIRED', 'auth credentials have expired');
  }

  private auth(request: El): string {
    const name = child(request, 'name')?.text;
    const password = child(request, 'password')?.text;
    if (name === undefined || password === undefined) {
      this.invalid.push('AuthRequest without name or password');
      throw new Fault('service.INVALID_REQUEST', 'invalid request: missing required element: ' + (name === undefined ? 'name' : 'password'));
    }
    if (name !== this.adminUser || password !== this.adminPassword) throw new Fault('account.AUTH_FAILED', `authentication failed for [${name}]`);
    const token = `0_${randomUUID().replace(/-/g, '')}`;
    this.tokens.set(token, { expiresAt: Date.now() + this.tokenLifetimeMs, revoked: false });
    return `<AuthResponse xmlns="${ADMIN}"><authToken>${esc(token)}</authToken><lifetime>${this.tokenLifetimeMs}</lifetime><zmgProxy>false</zmgProxy></AuthResponse>`;
  }

  private getAccount(request: El): string {
    const sel = child(request, 'account');
    const by = sel?.attrs.by;
    if (!sel || !by) {
      this.invalid.push('GetAccountRequest without <account by="…">');
      throw new Fault('service.INVALID_REQUEST', 'invalid request: missing required element: account');
    }
    if (by !== 'name' && by !== 'id') {
      this.invalid.push(`GetAccountRequest by="${by}"`);
      throw new Fault('service.INVALID_REQUEST', `invalid request: unknown value for by: ${by}`);
    }
    const key = sel.text;
    const acct = by === 'id' ? this.accounts.find((a) => a.id === key) : this.account(key);
    if (!acct) throw new Fault('account.NO_SUCH_ACCOUNT', `no such account: ${key}`);
    const wanted = request.attrs.attrs?.split(',').map((s) => s.trim());
    return `<GetAccountResponse xmlns="${ADMIN}">${accountXml(acct, wanted)}</GetAccountResponse>`;
  }

  private modifyAccount(request: El): string {
    const idEl = child(request, 'id');
    if (!idEl || idEl.text === '') {
      this.invalid.push('ModifyAccountRequest without <id>');
      throw new Fault('service.INVALID_REQUEST', 'invalid request: missing required attribute: id');
    }
    const acct = this.accounts.find((a) => a.id === idEl.text);
    // Zimbra looks the id up as an id: a name there finds nothing
    if (!acct) throw new Fault('account.NO_SUCH_ACCOUNT', `no such account: ${idEl.text}`);
    const attrs: Record<string, string[]> = {};
    for (const a of request.children.filter((c) => c.local === 'a')) {
      const n = a.attrs.n;
      if (!n) {
        this.invalid.push('<a> without n');
        throw new Fault('service.INVALID_REQUEST', 'invalid request: missing required attribute: n');
      }
      (attrs[n] ??= []).push(a.text);
    }
    this.modifications.push({ id: acct.id, name: acct.name, attrs });
    const status = attrs.zimbraAccountStatus;
    if (status && !(status.length === 1 && STATUSES.has(status[0]!))) {
      throw new Fault('account.INVALID_ATTR_VALUE', `invalid attr value: zimbraAccountStatus must be one of: ${[...STATUSES].join(',')}`);
    }
    if (!this.ignoreModifications) {
      if (status) acct.status = status[0]!;
      if (attrs.zimbraMailAlias) acct.aliases = attrs.zimbraMailAlias;
    }
    return `<ModifyAccountResponse xmlns="${ADMIN}">${accountXml(acct)}</ModifyAccountResponse>`;
  }

  // ---------------------------------------------------------------- answers

  private send(res: http.ServerResponse, bodyXml: string): void {
    const xml = `<soap:Envelope xmlns:soap="${SOAP12}"><soap:Header><context xmlns="${ZIMBRA}"><change token="1234"/></context></soap:Header><soap:Body>${bodyXml}</soap:Body></soap:Envelope>`;
    res.writeHead(200, { 'content-type': 'application/soap+xml; charset=utf-8' }).end(xml);
  }

  private sendFault(res: http.ServerResponse, f: Fault): void {
    this.faults[f.code] = (this.faults[f.code] ?? 0) + 1;
    const xml =
      `<soap:Envelope xmlns:soap="${SOAP12}"><soap:Body><soap:Fault>` +
      `<soap:Code><soap:Value>${f.receiver ? 'soap:Receiver' : 'soap:Sender'}</soap:Value></soap:Code>` +
      `<soap:Reason><soap:Text>${esc(f.reason)}</soap:Text></soap:Reason>` +
      `<soap:Detail><Error xmlns="${ZIMBRA}"><Code>${esc(f.code)}</Code><Trace>qtp1-${Date.now()}:1234:${Date.now()}</Trace></Error></soap:Detail>` +
      `</soap:Fault></soap:Body></soap:Envelope>`;
    // like Zimbra's SoapServlet: every fault is an HTTP 500
    res.writeHead(500, { 'content-type': 'application/soap+xml; charset=utf-8' }).end(xml);
  }
}

function accountXml(acct: FakeAccount, wanted?: string[]): string {
  const all: [string, string][] = [
    ['zimbraAccountStatus', acct.status],
    ...acct.aliases.map((a): [string, string] => ['zimbraMailAlias', a]),
    ...(acct.cosId ? [['zimbraCOSId', acct.cosId] as [string, string]] : []),
    ['zimbraMailHost', 'mbox1.zimbra.test'],
    ['zimbraId', acct.id],
    ['mail', acct.name],
  ];
  const attrs = wanted ? all.filter(([n]) => wanted.includes(n)) : all;
  return `<account name="${esc(acct.name)}" id="${esc(acct.id)}">${attrs.map(([n, v]) => `<a n="${n}">${esc(v)}</a>`).join('')}</account>`;
}

function child(el: El, local: string): El | undefined {
  return el.children.find((c) => c.local === local && c.ns === el.ns);
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

type Node = Record<string, unknown>;

/** The document element with each element's namespace resolved; an undeclared prefix is an error. */
function toTree(nodes: Node[]): El {
  const root = build(nodes, new Map([['xml', 'http://www.w3.org/XML/1998/namespace']])).elements;
  if (root.length !== 1) throw new Error(`${root.length} document elements`);
  return root[0]!;
}

function build(nodes: Node[], scope: Map<string, string>): { elements: El[]; text: string } {
  const elements: El[] = [];
  let text = '';
  for (const node of nodes) {
    const key = Object.keys(node).find((k) => k !== ':@');
    if (key === undefined || key.startsWith('?')) continue;
    if (key === '#text') {
      text += String(node[key]);
      continue;
    }
    const inner = new Map(scope);
    const attrs: Record<string, string> = {};
    for (const [k, v] of Object.entries((node[':@'] ?? {}) as Record<string, string>)) {
      if (k === 'xmlns') inner.set('', v);
      else if (k.startsWith('xmlns:')) inner.set(k.slice(6), v);
      else attrs[k] = v;
    }
    const colon = key.indexOf(':');
    const prefix = colon >= 0 ? key.slice(0, colon) : '';
    const ns = inner.get(prefix);
    if (prefix && ns === undefined) throw new Error(`undeclared namespace prefix ${prefix}`);
    const content = build((node[key] ?? []) as Node[], inner);
    elements.push({ ns: ns ?? '', local: colon >= 0 ? key.slice(colon + 1) : key, attrs, children: content.elements, text: content.text });
  }
  return { elements, text };
}
