// The HTTP lifecycle adapter against a small HTTP server in the test: templates and their escaping,
// bearer and HMAC authentication (checked with the documented recipe, not the adapter's code), status
// mapping, error kinds and whether they are retryable, suspension confirmed by reading the status back.

import { createHmac } from 'node:crypto';
import http from 'node:http';
import type net from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';
import { HttpLifecycleApi, type HttpLifecycleOptions } from '../../src/lifecycle/http.js';
import { LifecycleError } from '../../src/lifecycle/types.js';
import { freePort } from '../harness/net.js';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

type Reply = { status: number; json?: unknown; raw?: string } | 'hang';

let server: http.Server;
let base: string;
let seen: Seen[];
let route: (req: Seen) => Reply;
let closedWhileHanging: number;
const sockets = new Set<net.Socket>();

beforeEach(async () => {
  seen = [];
  closedWhileHanging = 0;
  route = () => ({ status: 500 });
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const s: Seen = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      seen.push(s);
      const r = route(s);
      if (r === 'hang') {
        res.on('close', () => closedWhileHanging++);
        return;
      }
      res.writeHead(r.status, { 'content-type': 'application/json' }).end(r.raw ?? (r.json === undefined ? '' : JSON.stringify(r.json)));
    });
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
});

afterEach(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

function options(over: Partial<HttpLifecycleOptions> = {}): HttpLifecycleOptions {
  return {
    status: { method: 'GET', url: `${base}/accounts/{account}`, statusField: 'account.state', statusMap: { ok: 'active', unpaid: 'suspended', blocked: 'locked' }, aliasesField: 'account.aliases', planField: 'account.plan', nameField: 'account.name' },
    suspend: { method: 'POST', url: `${base}/accounts/{account}/suspend`, body: '{"account":"{account}","ref":"{reference}","rule":"{rule}","article":"{article}","summary":"{summary}"}' },
    reinstate: { method: 'POST', url: `${base}/accounts/{account}/reinstate`, body: '{"account":"{account}","ref":"{reference}","by":"{by}"}' },
    auth: { bearer: 'tok-123' },
    timeoutMs: 2000,
    metrics: new Metrics({ version: 'test', defaultMetrics: false }),
    ...over,
  };
}

async function failure(p: Promise<unknown>): Promise<LifecycleError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(LifecycleError);
    return err as LifecycleError;
  }
  throw new Error('expected the call to fail');
}

async function calls(m: Metrics): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await m.lifecycleCalls.get()).values) out[`${v.labels.op}:${v.labels.result}`] = v.value;
  return out;
}

const reason = { reference: 'D-ABC123', rule: 'spam.burst', article: '4.2', summary: 'He said "stop"\nthen sent 5000 mails \\ é' };

describe('HTTP lifecycle adapter: status', () => {
  it('URL-encodes the account in the URL, sends the bearer token and maps the provider\'s values', async () => {
    route = () => ({ status: 200, json: { account: { state: 'unpaid', aliases: ['b@x.test', 'c@x.test'], plan: 'pro' } } });
    const api = new HttpLifecycleApi(options());
    const info = await api.status('a b+c/d@x.test');
    expect(info).toEqual({ status: 'suspended', aliases: ['b@x.test', 'c@x.test'], plan: 'pro' });
    // Asked by an alias, the API may say whose it is.
    route = () => ({ status: 200, json: { account: { state: 'ok', name: 'a@x.test' } } });
    expect(await api.status('b@x.test')).toEqual({ status: 'active', name: 'a@x.test' });
    expect(seen[0]!.method).toBe('GET');
    expect(seen[0]!.url).toBe('/accounts/a%20b%2Bc%2Fd%40x.test');
    expect(seen[0]!.headers.authorization).toBe('Bearer tok-123');
    expect(seen[0]!.body).toBe('');
  });

  it('maps our own names to themselves and anything else it does not know to unknown', async () => {
    const api = new HttpLifecycleApi(options());
    for (const [theirs, ours] of [['ok', 'active'], ['blocked', 'locked'], ['closed', 'closed'], ['CLOSED', 'closed'], ['lockout', 'lockout'], ['frozen', 'unknown'], ['constructor', 'unknown'], ['toString', 'unknown']] as const) {
      route = () => ({ status: 200, json: { account: { state: theirs } } });
      expect((await api.status('u@x.test')).status, theirs).toBe(ours);
    }
  });

  it('POSTs a status body template with the account JSON-escaped', async () => {
    route = () => ({ status: 200, json: { account: { state: 'ok' } } });
    const api = new HttpLifecycleApi(options({ status: { method: 'POST', url: `${base}/lookup`, body: '{"q":"{account}"}', statusField: 'account.state', statusMap: { ok: 'active' } } }));
    const tricky = 'x"},"admin":true,"y":{"z":"\\@x.test';
    expect((await api.status(tricky)).status).toBe('active');
    expect(seen[0]!.headers['content-type']).toMatch(/^application\/json/);
    expect(JSON.parse(seen[0]!.body)).toEqual({ q: tricky });
  });

  it('asks for no account named "." or "..": the URL would take them as steps to another endpoint', async () => {
    route = () => ({ status: 200, json: { account: { state: 'ok' } } });
    const api = new HttpLifecycleApi(options());
    expect(await api.status('..')).toEqual({ status: 'unknown' });
    expect(await api.status('.')).toEqual({ status: 'unknown' });
    expect((await failure(api.suspend('..', reason))).kind).toBe('not_found');
    expect((await failure(api.reinstate('..', { reference: 'D-1', by: 'cli:t' }))).kind).toBe('not_found');
    expect(seen).toEqual([]);
    // A name that only holds dots among other characters is an ordinary one.
    expect((await api.status('..a@x.test')).status).toBe('active');
    expect(seen.map((r) => r.url)).toEqual(['/accounts/..a%40x.test']);
  });

  it('reads 404 as an unknown account, not an error', async () => {
    route = () => ({ status: 404, json: { error: 'no such account' } });
    expect(await new HttpLifecycleApi(options()).status('ghost@x.test')).toEqual({ status: 'unknown' });
  });

  it('calls an answer without the status field, or not JSON, a protocol error (not retryable)', async () => {
    const api = new HttpLifecycleApi(options());
    route = () => ({ status: 200, json: { account: {} } });
    const e1 = await failure(api.status('u@x.test'));
    expect([e1.kind, e1.retryable]).toEqual(['protocol', false]);
    route = () => ({ status: 200, raw: '<html>login</html>' });
    const e2 = await failure(api.status('u@x.test'));
    expect([e2.kind, e2.retryable]).toEqual(['protocol', false]);
  });
});

describe('HTTP lifecycle adapter: error kinds', () => {
  it('5xx, 408 and 429 are unavailable and retryable; 400 refused, 401/403 auth, neither retryable', async () => {
    const api = new HttpLifecycleApi(options());
    const cases: [number, string, boolean][] = [
      [500, 'unavailable', true],
      [503, 'unavailable', true],
      [408, 'unavailable', true],
      [429, 'unavailable', true],
      [400, 'refused', false],
      [422, 'refused', false],
      [401, 'auth', false],
      [403, 'auth', false],
    ];
    for (const [status, kind, retryable] of cases) {
      route = () => ({ status, json: { error: 'x' } });
      const e = await failure(api.status('u@x.test'));
      expect([e.kind, e.retryable], `HTTP ${status}`).toEqual([kind, retryable]);
    }
  });

  it('a refused connection is unavailable and retryable', async () => {
    const port = await freePort();
    const api = new HttpLifecycleApi(options({ status: { method: 'GET', url: `http://127.0.0.1:${port}/a/{account}`, statusField: 's' } }));
    const e = await failure(api.status('u@x.test'));
    expect([e.kind, e.retryable]).toEqual(['unavailable', true]);
  });

  it('a server that never answers is a timeout within the deadline, and the request is aborted', async () => {
    route = () => 'hang';
    const api = new HttpLifecycleApi(options({ timeoutMs: 300 }));
    const t0 = performance.now();
    const e = await failure(api.status('u@x.test'));
    const elapsed = performance.now() - t0;
    expect([e.kind, e.retryable]).toEqual(['timeout', true]);
    expect(elapsed).toBeGreaterThanOrEqual(280);
    expect(elapsed).toBeLessThan(800);
    await expect.poll(() => closedWhileHanging, { timeout: 1000 }).toBe(1);
  });

  it('404 on suspend or reinstate is not_found, not retryable', async () => {
    route = () => ({ status: 404 });
    const api = new HttpLifecycleApi(options());
    const e1 = await failure(api.suspend('ghost@x.test', reason));
    expect([e1.kind, e1.retryable]).toEqual(['not_found', false]);
    const e2 = await failure(api.reinstate('ghost@x.test', { reference: 'D-1', by: 'ops' }));
    expect([e2.kind, e2.retryable]).toEqual(['not_found', false]);
  });

  it('records every call in the metrics with its result', async () => {
    const metrics = new Metrics({ version: 'test', defaultMetrics: false });
    const api = new HttpLifecycleApi(options({ metrics }));
    route = () => ({ status: 200, json: { account: { state: 'ok' } } });
    await api.status('u@x.test');
    route = () => ({ status: 503 });
    await failure(api.status('u@x.test'));
    await failure(api.reinstate('u@x.test', { reference: 'D-1', by: 'ops' }));
    expect(await calls(metrics)).toEqual({ 'status:ok': 1, 'status:unavailable': 1, 'reinstate:unavailable': 1 });
    expect((await metrics.lifecycleDuration.get()).values.find((v) => v.metricName?.endsWith('_count') && v.labels.op === 'status')?.value).toBe(2);
  });
});

describe('HTTP lifecycle adapter: suspend and reinstate', () => {
  it('sends the suspend template with every value JSON-escaped, then confirms by reading the status back', async () => {
    let state = 'ok';
    route = (req) => {
      if (req.url.endsWith('/suspend')) {
        state = 'blocked';
        return { status: 204 };
      }
      return { status: 200, json: { account: { state } } };
    };
    const api = new HttpLifecycleApi(options());
    expect(await api.suspend('u"1@x.test', reason)).toBe('locked');
    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual(['GET /accounts/u%221%40x.test', 'POST /accounts/u%221%40x.test/suspend', 'GET /accounts/u%221%40x.test']);
    expect(JSON.parse(seen[1]!.body)).toEqual({ account: 'u"1@x.test', ref: 'D-ABC123', rule: 'spam.burst', article: '4.2', summary: reason.summary });
  });

  it('sends absent optional values as empty strings', async () => {
    let state = 'ok';
    route = (req) => (req.url.endsWith('/suspend') ? ((state = 'suspended'), { status: 200 }) : { status: 200, json: { account: { state } } });
    await new HttpLifecycleApi(options()).suspend('u@x.test', { reference: 'D-2', summary: 'x' });
    expect(JSON.parse(seen[1]!.body)).toMatchObject({ rule: '', article: '' });
  });

  it('refuses (not retryable) a suspension the provider accepted but did not carry out', async () => {
    route = (req) => (req.url.endsWith('/suspend') ? { status: 200 } : { status: 200, json: { account: { state: 'ok' } } });
    const e = await failure(new HttpLifecycleApi(options()).suspend('u@x.test', reason));
    expect([e.kind, e.retryable]).toEqual(['refused', false]);
    expect(e.message).toMatch(/active/);
  });

  it('leaves an account the provider suspended, locked or closed as it is, and says so', async () => {
    for (const state of ['unpaid', 'blocked', 'closed']) {
      seen = [];
      route = () => ({ status: 200, json: { account: { state } } });
      expect(await new HttpLifecycleApi(options()).suspend('u@x.test', reason)).toBe('already_locked');
      expect(seen.map((s) => s.method)).toEqual(['GET']);
    }
  });

  it('locks only from a state it may change: maintenance waits (retryable), a state status_map does not name is left alone, a 404 is not_found', async () => {
    route = () => ({ status: 200, json: { account: { state: 'maintenance' } } });
    const waiting = await failure(new HttpLifecycleApi(options()).suspend('u@x.test', reason));
    expect([waiting.kind, waiting.retryable]).toEqual(['refused', true]);
    route = () => ({ status: 200, json: { account: { state: 'frozen' } } });
    const foreign = await failure(new HttpLifecycleApi(options()).suspend('u@x.test', reason));
    expect([foreign.kind, foreign.retryable]).toEqual(['refused', false]);
    expect(foreign.message).toMatch(/"frozen", which lifecycle\.http\.status\.status_map does not name/);
    route = () => ({ status: 404 });
    expect((await failure(new HttpLifecycleApi(options()).suspend('u@x.test', reason))).kind).toBe('not_found');
    // Nothing was sent but the status reads.
    expect(seen.map((s) => s.method)).toEqual(['GET', 'GET', 'GET']);
  });

  it('takes 409 on suspend as success when the account is suspended by then', async () => {
    let state = 'ok';
    route = (req) => (req.url.endsWith('/suspend') ? ((state = 'blocked'), { status: 409, json: { error: 'already suspended' } }) : { status: 200, json: { account: { state } } });
    expect(await new HttpLifecycleApi(options()).suspend('u@x.test', reason)).toBe('locked');
    route = (req) => (req.url.endsWith('/suspend') ? { status: 409 } : { status: 200, json: { account: { state: 'ok' } } });
    const e = await failure(new HttpLifecycleApi(options()).suspend('u@x.test', reason));
    expect(e.kind).toBe('refused');
  });

  it('a 4xx on suspend is refused and not retryable, without reading the status back', async () => {
    route = (req) => (req.url.endsWith('/suspend') ? { status: 400, json: { error: 'bad' } } : { status: 200, json: { account: { state: 'ok' } } });
    const e = await failure(new HttpLifecycleApi(options()).suspend('u@x.test', reason));
    expect([e.kind, e.retryable]).toEqual(['refused', false]);
    expect(seen.map((s) => s.method)).toEqual(['GET', 'POST']);
  });

  it('sends the reinstate template with {by}', async () => {
    route = () => ({ status: 200 });
    await new HttpLifecycleApi(options()).reinstate('u@x.test', { reference: 'D-3', by: 'alice "ops"' });
    expect(seen[0]!.url).toBe('/accounts/u%40x.test/reinstate');
    expect(JSON.parse(seen[0]!.body)).toEqual({ account: 'u@x.test', ref: 'D-3', by: 'alice "ops"' });
  });
});

describe('HTTP lifecycle adapter: HMAC signing', () => {
  const secret = 's3cr3t-key';
  /** The recipe of README "Signed requests" (src/lifecycle/signing.ts), written out independently. */
  const verify = (s: Seen, header = 'x-douane-signature') => {
    const ts = s.headers['x-douane-timestamp'] as string;
    const expected = 'sha256=' + createHmac('sha256', secret).update(`${ts}\n${s.method}\n${s.url}\n${s.body}`).digest('hex');
    return { ts: Number(ts), ok: s.headers[header] === expected };
  };

  it('signs timestamp, method, path and body with HMAC-SHA256 in X-Douane-Signature, verifiable by the provider', async () => {
    let state = 'ok';
    route = (req) => (req.url.endsWith('/suspend') ? ((state = 'blocked'), { status: 200 }) : { status: 200, json: { account: { state } } });
    const api = new HttpLifecycleApi(options({ auth: { hmac: { secret } } }));
    await api.suspend('u@x.test', reason);
    const [get, post] = seen;
    expect(post!.headers.authorization).toBeUndefined();
    const v = verify(post!);
    expect(v.ok).toBe(true);
    expect(Math.abs(v.ts - Date.now() / 1000)).toBeLessThan(5);
    // a GET has no body: the signature covers the timestamp and the empty body
    expect(get!.body).toBe('');
    expect(verify(get!).ok).toBe(true);
  });

  it('a tampered body no longer verifies, and the header name is configurable', async () => {
    route = () => ({ status: 200 });
    const api = new HttpLifecycleApi(options({ auth: { hmac: { secret, header: 'X-Provider-Sig' } } }));
    await api.reinstate('u@x.test', { reference: 'D-4', by: 'ops' });
    expect(verify(seen[0]!, 'x-provider-sig').ok).toBe(true);
    expect(verify({ ...seen[0]!, body: seen[0]!.body.replace('u@x.test', 'v@x.test') }, 'x-provider-sig').ok).toBe(false);
  });

  it('a request replayed to another URL or with another method no longer verifies', async () => {
    let state = 'ok';
    route = (req) => (req.url.endsWith('/lock') ? ((state = 'blocked'), { status: 200 }) : { status: 200, json: { account: { state } } });
    const api = new HttpLifecycleApi(options({ auth: { hmac: { secret } }, suspend: { method: 'POST', url: `${base}/accounts/{account}/lock` }, reinstate: { method: 'POST', url: `${base}/accounts/{account}/unlock` } }));
    await api.suspend('u@x.test', reason);
    const lock = seen[1]!;
    expect(lock.url).toBe('/accounts/u%40x.test/lock');
    expect(lock.body).toBe('');
    expect(verify(lock).ok).toBe(true);
    expect(verify({ ...lock, url: '/accounts/u%40x.test/unlock' }).ok).toBe(false);
    expect(verify({ ...lock, url: '/accounts/v%40x.test/lock' }).ok).toBe(false);
    expect(verify({ ...lock, method: 'DELETE' }).ok).toBe(false);
  });
});

describe('HTTP lifecycle adapter under the enforcer', () => {
  it('a lock of an account the provider had suspended (non-payment) is not Douane\'s: reinstating leaves it suspended', async () => {
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { AuditLog } = await import('../../src/audit/log.js');
    const { Enforcer } = await import('../../src/enforce/enforcer.js');
    const { Outbox } = await import('../../src/enforce/outbox.js');
    const { MemoryEnforcementState } = await import('../../src/enforce/state.js');
    const { createLogger } = await import('../../src/log.js');
    const { loadPolicy } = await import('../../src/policy/load.js');
    let state = 'unpaid';
    route = (req) => {
      if (req.url.endsWith('/suspend')) state = 'blocked';
      if (req.url.endsWith('/reinstate')) state = 'ok';
      return { status: 200, json: { account: { state } } };
    };
    const dir = mkdtempSync(join(tmpdir(), 'douane-http-lock-'));
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    const log = createLogger({ level: 'silent' });
    const api = new HttpLifecycleApi(options({ metrics }));
    const handlers = { lifecycle: (j: Parameters<ReturnType<InstanceType<typeof Enforcer>['lifecycleHandler']>>[0]) => enforcer.lifecycleHandler()(j), notify: async () => undefined, webhook: async () => undefined, strike: async () => undefined };
    const outbox = new Outbox({ dir: join(dir, 'outbox'), handlers, minDelayMs: 10, maxDelayMs: 50, metrics, log });
    const enforcementState = new MemoryEnforcementState();
    const policy = loadPolicy('policies');
    const enforcer: InstanceType<typeof Enforcer> = new Enforcer({
      state: enforcementState,
      outbox,
      audit: new AuditLog(join(dir, 'audit.log')),
      policy: () => policy,
      settings: { dry_run: false, approval: false, breaker_max_per_hour: 10, contact: 'a@x.test', provider: 'T', notify_holder: false, abuse_team: [], webhook: false },
      metrics,
      log,
      deadlineMs: 2000,
      lifecycle: api,
    });
    await outbox.start();
    try {
      await enforcer.suspend('u@x.test', 'suspend_account', { by: 'cli:ops', reference: 'D-1', reason: 'r' });
      await outbox.idle();
      expect((await enforcementState.account('u@x.test')).suspension?.lockedBy).toBe('someone_else');
      await enforcer.reinstate('u@x.test', 'cli:ops');
      await outbox.idle();
      expect(state).toBe('unpaid');
      // (The never-suspend list's addresses are looked up too, in the background.)
      expect(seen.filter((x) => x.url.includes('u%40x.test')).map((x) => `${x.method} ${x.url}`)).toEqual(['GET /accounts/u%40x.test']);
    } finally {
      await outbox.stop();
    }
  });
});

describe('HTTP lifecycle adapter: configuration checks', () => {
  it('refuses unknown placeholders, a body template that is not JSON, and a non-HTTP URL', () => {
    expect(() => new HttpLifecycleApi(options({ reinstate: { method: 'POST', url: `${base}/{acount}` } }))).toThrow(/unknown placeholder \{acount\}/);
    expect(() => new HttpLifecycleApi(options({ reinstate: { method: 'POST', url: `${base}/r`, body: '{"a": {account}}' } }))).toThrow(/not JSON/);
    expect(() => new HttpLifecycleApi(options({ reinstate: { method: 'POST', url: 'ftp://x/{account}' } }))).toThrow(/http/);
  });
});
