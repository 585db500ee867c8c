// The Zimbra admin SOAP adapter against a fake Zimbra that checks the wire format: status mapping and
// aliases, suspend → locked and reinstate → active (idempotent, by account id, read back), the admin
// token (one AuthRequest for many calls, renewed before it expires and after service.AUTH_EXPIRED),
// failures (SOAP fault, bare 500, no answer, server down, TLS), and "closed" never being sent.

import { afterEach, describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';
import { LifecycleError } from '../../src/lifecycle/types.js';
import { modifyAccountStatusRequest, ZimbraAdminApi, type ZimbraAdminOptions } from '../../src/lifecycle/zimbra.js';
import { FakeZimbra, type FakeZimbraOptions } from '../harness/fake-zimbra.js';

const fakes: FakeZimbra[] = [];

afterEach(async () => {
  const done = fakes.splice(0);
  await Promise.all(done.map((z) => z.stop()));
  for (const z of done) {
    // whatever the test did, the adapter spoke Zimbra's format and never closed an account
    expect(z.invalid, 'requests the fake found malformed').toEqual([]);
    expect(z.modifications.flatMap((m) => m.attrs.zimbraAccountStatus ?? [])).not.toContain('closed');
  }
});

async function fake(opts: FakeZimbraOptions = {}): Promise<FakeZimbra> {
  const z = await FakeZimbra.start(opts);
  fakes.push(z);
  return z;
}

function client(z: FakeZimbra, over: Partial<ZimbraAdminOptions> = {}): ZimbraAdminApi {
  return new ZimbraAdminApi({ url: z.url, adminUser: z.adminUser, adminPassword: z.adminPassword, timeoutMs: 2000, metrics: new Metrics({ version: 'test', defaultMetrics: false }), ...over });
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

const why = { reference: 'D-ZIM001', rule: 'spam.burst', summary: 'burst of spam' };
const back = { reference: 'D-ZIM001', by: 'ops' };

describe('Zimbra adapter: status', () => {
  it('reads status, id, aliases and plan (COS) from GetAccountResponse', async () => {
    const z = await fake();
    const a = z.addAccount({ name: 'alice@example.test', aliases: ['al@example.test', 'a.l@example.test'], cosId: 'cos-0001' });
    const api = client(z, { cosPlans: { 'cos-0001': 'business' } });
    expect(await api.status('alice@example.test')).toEqual({ status: 'active', id: a.id, aliases: ['al@example.test', 'a.l@example.test'], plan: 'business', name: 'alice@example.test' });
    expect(await client(z).status('alice@example.test')).toMatchObject({ plan: 'cos-0001' });
    // Zimbra finds an account by any of its addresses, and names it
    expect(await api.status('al@example.test')).toMatchObject({ id: a.id, status: 'active', name: 'alice@example.test' });
  });

  it('keeps Zimbra\'s status names and reads a status it does not know as unknown', async () => {
    const z = await fake();
    const api = client(z);
    for (const s of ['active', 'locked', 'lockout', 'closed', 'maintenance', 'pending']) {
      z.addAccount({ name: `${s}@example.test`, status: s });
      expect((await api.status(`${s}@example.test`)).status).toBe(s);
    }
    z.addAccount({ name: 'odd@example.test', status: 'hibernating' });
    expect((await api.status('odd@example.test')).status).toBe('unknown');
  });

  it('returns unknown for account.NO_SUCH_ACCOUNT rather than failing', async () => {
    const z = await fake();
    expect(await client(z).status('nobody@example.test')).toEqual({ status: 'unknown' });
    expect(z.faults['account.NO_SUCH_ACCOUNT']).toBe(1);
  });

  it('escapes XML in the account name and in the admin password', async () => {
    const z = await fake({ adminPassword: `p<&>"'w` });
    z.addAccount({ name: `o'brien&"co"@example.test`, status: 'locked' });
    expect((await client(z).status(`o'brien&"co"@example.test`)).status).toBe('locked');
    expect(z.count('AuthRequest')).toBe(1);
  });
});

describe('Zimbra adapter: suspend and reinstate', () => {
  it('suspends by setting locked with ModifyAccountRequest on the account id, exactly once', async () => {
    const z = await fake();
    const a = z.addAccount({ name: 'bob@example.test' });
    const api = client(z);
    await api.suspend('bob@example.test', why);
    expect(a.status).toBe('locked');
    expect(z.modifications).toEqual([{ id: a.id, name: 'bob@example.test', attrs: { zimbraAccountStatus: ['locked'] } }]);
    // read back after the write
    expect(z.count('GetAccountRequest')).toBe(2);
    expect((await api.status('bob@example.test')).status).toBe('locked');
  });

  it('suspending a locked account succeeds without modifying it', async () => {
    const z = await fake();
    z.addAccount({ name: 'bob@example.test' });
    const api = client(z);
    await api.suspend('bob@example.test', why);
    await api.suspend('bob@example.test', why);
    expect(z.count('ModifyAccountRequest')).toBe(1);
  });

  it('locks an account in lockout (which would otherwise expire) and leaves a closed or pending one alone', async () => {
    const z = await fake();
    const lockout = z.addAccount({ name: 'lo@example.test', status: 'lockout' });
    const closed = z.addAccount({ name: 'gone@example.test', status: 'closed' });
    const pending = z.addAccount({ name: 'new@example.test', status: 'pending' });
    const api = client(z);
    expect(await api.suspend('lo@example.test', why)).toBe('locked');
    expect(await api.suspend('gone@example.test', why)).toBe('already_locked');
    // Locked, it would be made active by a reinstatement, before provisioning is done with it.
    expect(await api.suspend('new@example.test', why)).toBe('already_locked');
    expect([lockout.status, closed.status, pending.status]).toEqual(['locked', 'closed', 'pending']);
    expect(z.modifications.map((m) => m.name)).toEqual(['lo@example.test']);
  });

  it('refuses to suspend during maintenance for now (retryable)', async () => {
    const z = await fake();
    z.addAccount({ name: 'mv@example.test', status: 'maintenance' });
    const e = await failure(client(z).suspend('mv@example.test', why));
    expect([e.kind, e.retryable]).toEqual(['refused', true]);
    expect(z.count('ModifyAccountRequest')).toBe(0);
  });

  it('reinstates a locked account to active, exactly once, and does nothing to an active one', async () => {
    const z = await fake();
    const a = z.addAccount({ name: 'carol@example.test', status: 'locked' });
    const api = client(z);
    await api.reinstate('carol@example.test', back);
    expect(a.status).toBe('active');
    await api.reinstate('carol@example.test', back);
    expect(z.modifications).toEqual([{ id: a.id, name: 'carol@example.test', attrs: { zimbraAccountStatus: ['active'] } }]);
  });

  it('never reopens a closed account', async () => {
    const z = await fake();
    const a = z.addAccount({ name: 'gone@example.test', status: 'closed' });
    const e = await failure(client(z).reinstate('gone@example.test', back));
    expect([e.kind, e.retryable]).toEqual(['refused', false]);
    expect(a.status).toBe('closed');
    expect(z.count('ModifyAccountRequest')).toBe(0);
  });

  it('refuses (not retryable) when the status read back did not change', async () => {
    const z = await fake();
    z.addAccount({ name: 'sticky@example.test' });
    z.ignoreModifications = true;
    const e = await failure(client(z).suspend('sticky@example.test', why));
    expect([e.kind, e.retryable]).toEqual(['refused', false]);
    expect(e.message).toMatch(/active/);
  });

  it('suspend or reinstate of a missing account is not_found, not retryable', async () => {
    const z = await fake();
    const api = client(z);
    for (const p of [api.suspend('nobody@example.test', why), api.reinstate('nobody@example.test', back)]) {
      const e = await failure(p);
      expect([e.kind, e.retryable]).toEqual(['not_found', false]);
    }
    expect(z.count('ModifyAccountRequest')).toBe(0);
  });

  it('cannot build a request that sets closed, in any spelling', () => {
    for (const s of ['closed', 'Closed', ' CLOSED ', 'maintenance']) {
      expect(() => modifyAccountStatusRequest('0000-id', s as 'locked')).toThrow(LifecycleError);
    }
    expect(modifyAccountStatusRequest('0000-id', 'locked')).toContain('<id>0000-id</id><a n="zimbraAccountStatus">locked</a>');
  });
});

describe('Zimbra adapter: admin token', () => {
  it('authenticates once for many calls', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const api = client(z);
    for (let i = 0; i < 5; i++) await api.status('u@example.test');
    await api.suspend('u@example.test', why);
    expect(z.count('AuthRequest')).toBe(1);
    expect(z.count('GetAccountRequest')).toBe(7);
  });

  it('concurrent first calls share one AuthRequest', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const api = client(z);
    const all = await Promise.all(Array.from({ length: 8 }, () => api.status('u@example.test')));
    expect(all.every((i) => i.status === 'active')).toBe(true);
    expect(z.count('AuthRequest')).toBe(1);
  });

  it('renews the token at 80% of its lifetime (injected clock)', async () => {
    const z = await fake({ tokenLifetimeMs: 3_600_000 });
    z.addAccount({ name: 'u@example.test' });
    let clock = 1_000_000;
    const api = client(z, { now: () => clock });
    await api.status('u@example.test');
    clock += 0.79 * 3_600_000;
    await api.status('u@example.test');
    expect(z.count('AuthRequest')).toBe(1);
    clock += 0.02 * 3_600_000;
    await api.status('u@example.test');
    expect(z.count('AuthRequest')).toBe(2);
  });

  it('renews a short-lived token before Zimbra would call it expired (real clock)', async () => {
    // Renewed from 80 % of the lifetime (2.4 s), expired at 3 s: a timer late by up to 0.5 s still lands between.
    const z = await fake({ tokenLifetimeMs: 3000 });
    z.addAccount({ name: 'u@example.test' });
    const api = client(z);
    await api.status('u@example.test');
    await new Promise((r) => setTimeout(r, 2500));
    await api.status('u@example.test');
    expect(z.count('AuthRequest')).toBe(2);
    expect(z.faults['service.AUTH_EXPIRED']).toBeUndefined();
  });

  it('after service.AUTH_EXPIRED, authenticates again and retries the call once', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const api = client(z);
    await api.status('u@example.test');
    z.expireTokens();
    expect((await api.status('u@example.test')).status).toBe('active');
    expect(z.faults['service.AUTH_EXPIRED']).toBe(1);
    expect(z.count('AuthRequest')).toBe(2);
    expect(z.count('GetAccountRequest')).toBe(3);
  });

  it('a suspend interrupted by an expired token is carried out once', async () => {
    const z = await fake();
    const a = z.addAccount({ name: 'u@example.test' });
    const api = client(z);
    await api.status('u@example.test');
    z.expireTokens();
    await api.suspend('u@example.test', why);
    expect(a.status).toBe('locked');
    expect(z.count('ModifyAccountRequest')).toBe(1);
  });

  it('gives up with an auth error when even a fresh token is refused (no loop)', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    z.rejectAllTokens = true;
    const e = await failure(client(z).status('u@example.test'));
    expect([e.kind, e.retryable]).toEqual(['auth', false]);
    expect(z.count('AuthRequest')).toBe(2);
  });

  it('bad admin credentials (account.AUTH_FAILED) are an auth error, not retryable, and the password stays out of it', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const e = await failure(client(z, { adminPassword: 'wrong-Pa55word' }).status('u@example.test'));
    expect([e.kind, e.retryable]).toEqual(['auth', false]);
    expect(e.message).toContain('account.AUTH_FAILED');
    expect(e.message).not.toContain('wrong-Pa55word');
  });
});

describe('Zimbra adapter: failures', () => {
  it('a SOAP fault service.FAILURE (Zimbra\'s own failure) is unavailable and retryable', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const api = client(z);
    await api.status('u@example.test');
    z.failNext(1, 'fault');
    const e = await failure(api.status('u@example.test'));
    expect([e.kind, e.retryable]).toEqual(['unavailable', true]);
    expect(e.message).toContain('service.FAILURE');
  });

  it('an HTTP 500 without a SOAP fault is unavailable and retryable', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const api = client(z);
    await api.status('u@example.test');
    z.failNext(1, '500');
    const e = await failure(api.status('u@example.test'));
    expect([e.kind, e.retryable]).toEqual(['unavailable', true]);
    expect((await api.status('u@example.test')).status).toBe('active');
  });

  it('no answer is a timeout within the deadline, and the request is aborted', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const api = client(z, { timeoutMs: 300 });
    await api.status('u@example.test');
    z.failNext(1, 'timeout');
    const t0 = performance.now();
    const e = await failure(api.status('u@example.test'));
    const elapsed = performance.now() - t0;
    expect([e.kind, e.retryable]).toEqual(['timeout', true]);
    expect(elapsed).toBeGreaterThanOrEqual(280);
    expect(elapsed).toBeLessThan(800);
    await expect.poll(() => z.hangingRequests, { timeout: 1000 }).toBe(0);
  });

  it('a hanging AuthRequest is bounded by the caller\'s deadline too', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    z.failNext(1, 'timeout');
    const t0 = performance.now();
    const e = await failure(client(z, { timeoutMs: 300 }).status('u@example.test'));
    expect(e.kind).toBe('timeout');
    expect(performance.now() - t0).toBeLessThan(800);
  });

  it('a server that is down is unavailable and retryable; it works again once up', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const api = client(z);
    await api.status('u@example.test');
    await z.failNext(1, 'down');
    const e = await failure(api.status('u@example.test'));
    expect([e.kind, e.retryable]).toEqual(['unavailable', true]);
    await z.up();
    expect((await api.status('u@example.test')).status).toBe('active');
  });

  it('records every operation in the metrics, the AuthRequest included', async () => {
    const z = await fake();
    z.addAccount({ name: 'u@example.test' });
    const metrics = new Metrics({ version: 'test', defaultMetrics: false });
    const api = client(z, { metrics });
    await api.status('u@example.test');
    await api.suspend('u@example.test', why);
    z.failNext(1, '500');
    await failure(api.reinstate('u@example.test', back));
    const seen: Record<string, number> = {};
    for (const v of (await metrics.lifecycleCalls.get()).values) seen[`${v.labels.adapter}:${v.labels.op}:${v.labels.result}`] = v.value;
    expect(seen).toEqual({ 'zimbra:auth:ok': 1, 'zimbra:status:ok': 1, 'zimbra:suspend:ok': 1, 'zimbra:reinstate:unavailable': 1 });
  });
});

describe('Zimbra adapter: TLS', () => {
  it('verifies the server certificate against the configured CA', async () => {
    const z = await fake({ tls: true });
    z.addAccount({ name: 'u@example.test' });
    expect((await client(z, { tls: { ca: z.cert } }).status('u@example.test')).status).toBe('active');
  });

  it('refuses an unverifiable certificate (unavailable), unless verification is turned off', async () => {
    const z = await fake({ tls: true });
    z.addAccount({ name: 'u@example.test' });
    const e = await failure(client(z).status('u@example.test'));
    expect([e.kind, e.retryable]).toEqual(['unavailable', true]);
    expect(e.message).toMatch(/TLS/);
    expect(z.count('AuthRequest')).toBe(0);
    expect((await client(z, { tls: { rejectUnauthorized: false } }).status('u@example.test')).status).toBe('active');
  });
});

describe('the fake Zimbra checks the wire format', () => {
  const env = (header: string, body: string, ns = 'http://www.w3.org/2003/05/soap-envelope') => `<soap:Envelope xmlns:soap="${ns}">${header}<soap:Body>${body}</soap:Body></soap:Envelope>`;
  const post = async (z: FakeZimbra, xml: string, type = 'application/soap+xml; charset=utf-8') => {
    const res = await fetch(z.url, { method: 'POST', headers: { 'content-type': type }, body: xml });
    const text = await res.text();
    return { status: res.status, code: /<Code>([^<]+)<\/Code>/.exec(text)?.[1] };
  };
  const auth = (z: FakeZimbra) => `<AuthRequest xmlns="urn:zimbraAdmin"><name>${z.adminUser}</name><password>${z.adminPassword}</password></AuthRequest>`;

  it('refuses SOAP 1.1, a body outside urn:zimbraAdmin, and requests without a valid token', async () => {
    const z = await fake();
    const a = z.addAccount({ name: 'u@example.test' });
    expect(await post(z, env('', auth(z)))).toEqual({ status: 200, code: undefined });
    expect((await post(z, env('', auth(z), 'http://schemas.xmlsoap.org/soap/envelope/'))).code).toBe('service.INVALID_REQUEST');
    expect((await post(z, env('', auth(z)), 'text/xml; charset=utf-8')).code).toBe('service.INVALID_REQUEST');
    expect((await post(z, env('', auth(z).replace('urn:zimbraAdmin', 'urn:zimbraAccount')))).code).toBe('service.INVALID_REQUEST');
    const get = `<GetAccountRequest xmlns="urn:zimbraAdmin"><account by="name">u@example.test</account></GetAccountRequest>`;
    expect(await post(z, env('', get))).toEqual({ status: 500, code: 'service.AUTH_REQUIRED' });
    expect((await post(z, env('<soap:Header><context xmlns="urn:zimbra"><authToken>forged</authToken></context></soap:Header>', get))).code).toBe('service.AUTH_REQUIRED');
    // ModifyAccountRequest by name instead of id finds nothing
    const token = /<authToken>([^<]+)</.exec(await (await fetch(z.url, { method: 'POST', headers: { 'content-type': 'application/soap+xml; charset=utf-8' }, body: env('', auth(z)) })).text())![1]!;
    const header = `<soap:Header><context xmlns="urn:zimbra"><authToken>${token}</authToken></context></soap:Header>`;
    expect((await post(z, env(header, `<ModifyAccountRequest xmlns="urn:zimbraAdmin"><id>u@example.test</id><a n="zimbraAccountStatus">locked</a></ModifyAccountRequest>`))).code).toBe('account.NO_SUCH_ACCOUNT');
    expect((await post(z, env(header, `<ModifyAccountRequest xmlns="urn:zimbraAdmin" name="u@example.test"><a n="zimbraAccountStatus">locked</a></ModifyAccountRequest>`))).code).toBe('service.INVALID_REQUEST');
    expect(a.status).toBe('active');
    // the adapter's own requests are checked by afterEach: these were malformed on purpose
    z.invalid.splice(0);
  });
});
