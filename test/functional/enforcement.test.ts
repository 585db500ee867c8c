// Enforcement end to end, with real clamd and Redis and a fake Zimbra admin API that speaks the real SOAP
// wire format: malware strikes climb the ladder to a suspension that blocks the account on every instance,
// is carried out in Zimbra exactly once (also when Zimbra is down for a while and Douane restarts),
// notifies the holder and the abuse team, and is audited; safeguards hold (allowlist, dry run, approval,
// circuit breaker); reinstatement undoes it.

import { createHmac } from 'node:crypto';
import http from 'node:http';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Redis } from 'ioredis';
import { simpleParser } from 'mailparser';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AdminServer } from '../../src/admin.js';
import { claimKey, MemoryEnforcementState, RedisEnforcementState } from '../../src/enforce/state.js';
import { LifecycleError, type LifecycleApi } from '../../src/lifecycle/types.js';
import { ZimbraAdminApi } from '../../src/lifecycle/zimbra.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { loadPolicy } from '../../src/policy/load.js';
import { EICAR, startClamd, type ClamdInstance } from '../harness/clamd.js';
import { enforcement } from '../harness/enforcement.js';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { FakeZimbra } from '../harness/fake-zimbra.js';
import { startGateway, type TestGateway } from '../harness/gateway.js';
import { mimeMessage } from '../harness/mime.js';
import { RawSmtp } from '../harness/net.js';
import { startRedis, type RedisInstance } from '../harness/redis.js';

let clamd: ClamdInstance;
let redis: RedisInstance;
let upstream: FakeUpstream;
let zimbra: FakeZimbra;
const gateways: TestGateway[] = [];
const admins: AdminServer[] = [];

beforeAll(async () => {
  [clamd, redis] = await Promise.all([startClamd(), startRedis()]);
}, 60_000);
afterAll(async () => {
  await Promise.all([clamd?.stop(), redis?.stop()]);
});
beforeEach(async () => {
  redis.cli('flushall');
  upstream = await FakeUpstream.start();
  zimbra = await FakeZimbra.start();
  for (const name of ['user1@example.test', 'user2@example.test', 'user3@example.test', 'user4@example.test', 'postmaster@example.test']) zimbra.addAccount({ name });
});
afterEach(async () => {
  await Promise.all(admins.splice(0).map((a) => a.stop()));
  await Promise.all(gateways.splice(0).map((g) => g.stop()));
  await Promise.all([upstream.stop(), zimbra.stop()]);
});

async function gateway(enforcement: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Promise<TestGateway> {
  const gw = await startGateway(upstream.port, {
    clamd: { hosts: [{ host: '127.0.0.1', port: clamd.port }], timeout: '10s' },
    limits: { redis: { url: redis.url } },
    policy: { dir: 'fixtures/policies/enforce', watch: false },
    lifecycle: { adapter: 'zimbra', timeout: '2s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword } },
    enforcement: {
      contact: 'abuse@provider.test',
      provider: 'TestHost',
      notify: { abuse_team: ['abuse-team@provider.test'], from: 'abuse@provider.test' },
      outbox: { retry_min: '100ms', retry_max: '500ms' },
      ...enforcement,
    },
    ...extra,
  });
  gateways.push(gw);
  return gw;
}

async function admin(gw: TestGateway): Promise<string> {
  const a = new AdminServer({ address: '127.0.0.1', port: 0 }, gw.metrics, createLogger({ level: 'silent' }));
  a.setAccounts(gw.gateway.enforcer);
  await a.start();
  admins.push(a);
  return `http://127.0.0.1:${a.port}`;
}

async function send(gw: TestGateway, from: string, message: string): Promise<{ mail: string; data: string }> {
  const c = await RawSmtp.connect(gw.port('trusted'));
  await c.reply();
  await c.command('EHLO t');
  const mail = await c.command(`MAIL FROM:<${from}>`);
  let data = '';
  if (mail.startsWith('250')) {
    await c.command('RCPT TO:<friend@example.net>');
    await c.command('DATA');
    c.write(message + '\r\n.\r\n');
    data = await c.reply(20_000);
  }
  c.close();
  return { mail, data };
}

const eicar = (from: string) => mimeMessage({ from, subject: 'invoice', attachments: [{ name: 'invoice.com', content: Buffer.from(EICAR) }] });
const clean = (from: string) => `From: ${from}\r\nSubject: hello\r\n\r\nJust a note.\r\n`;

/** The audit trail of a gateway, or of the state directory given. */
function audit(of: TestGateway | string): Record<string, unknown>[] {
  try {
    return readFileSync(join(typeof of === 'string' ? of : of.stateDir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  } catch {
    return [];
  }
}

/** A lifecycle API that is down until told otherwise, recording the locks and unlocks it then makes. */
function downLifecycle(): { lifecycle: LifecycleApi; calls: string[]; api: { down: boolean } } {
  const api = { down: true };
  const calls: string[] = [];
  const lifecycle: LifecycleApi = {
    kind: 'stub',
    status: async () => ({ status: 'active' }),
    suspend: async (a) => {
      if (api.down) throw new LifecycleError('unavailable', 'the API is down', true);
      calls.push(`lock ${a}`);
      return 'locked';
    },
    reinstate: async (a) => void calls.push(`unlock ${a}`),
  };
  return { lifecycle, calls, api };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('the strike ladder, end to end', () => {
  it('EICAR three times: notified, then locked in Zimbra once, refused on another instance, audited, reinstated', async () => {
    const [a, b] = [await gateway(), await gateway()];
    for (let i = 0; i < 3; i++) expect((await send(a, 'user1@example.test', eicar('user1@example.test'))).data).toMatch(/^554 5\.7\.1 .*malware/);
    await until('the account is locked in Zimbra', () => zimbra.account('user1@example.test')!.status === 'locked');
    await a.gateway.outbox.idle(); // a duplicate lock would come from a retry
    expect(zimbra.modifications.filter((m) => m.name === 'user1@example.test')).toHaveLength(1);
    expect(zimbra.invalid).toEqual([]);

    // Blocked at MAIL FROM on the other instance too, with the reason, the incident and whom to contact.
    const refused = await send(b, 'user1@example.test', clean('user1@example.test'));
    expect(refused.mail).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(user1@example\.test\) since \d{4}-\d\d-\d\d \d\d:\d\d UTC \(incident D-[0-9A-Z]{6}\); contact abuse@provider\.test\. Ref D-[0-9A-Z]{6}, rule malware\.found, art\. 4\.6\.$/);
    // Other accounts are not affected.
    expect((await send(b, 'user2@example.test', clean('user2@example.test'))).data).toMatch(/^250 /);

    // The holder and the abuse team were told (through the upstream), in French and English.
    await until('notices delivered', () => a.gateway.outbox.size === 0 && upstream.messages.filter((m) => m.from === 'abuse@provider.test').length >= 3);
    const notices = await Promise.all(upstream.messages.filter((m) => m.from === 'abuse@provider.test').map(async (m) => ({ to: m.to, mail: await simpleParser(m.raw) })));
    const toHolder = notices.filter((n) => n.to.includes('user1@example.test')).map((n) => n.mail);
    expect(toHolder.some((m) => m.subject === '[TestHost] Avertissement / Warning — user1@example.test')).toBe(true);
    const suspension = toHolder.find((m) => m.subject?.startsWith('[TestHost] Envoi suspendu / Sending suspended'))!;
    expect(suspension.text).toMatch(/article 4\.6 des conditions particulières/);
    expect(suspension.text).toMatch(/article 4\.6 of the service terms/);
    expect(suspension.text).toMatch(/répondez à abuse@provider\.test en citant la référence D-[0-9A-Z]{6}/);
    expect(suspension.text).toMatch(/write to abuse@provider\.test quoting reference D-[0-9A-Z]{6}/);
    expect(notices.some((n) => n.to.includes('abuse-team@provider.test'))).toBe(true);

    const entries = audit(a).filter((e) => e.account === 'user1@example.test');
    expect(entries.map((e) => e.action)).toEqual(expect.arrayContaining(['strike', 'notify', 'suspend_account', 'lifecycle_locked']));
    expect(entries.filter((e) => e.action === 'strike')).toHaveLength(3);
    const strike = entries.find((e) => e.action === 'strike')!;
    expect(strike).toMatchObject({ strike: 'malware', weight: 10, rule: 'malware.found', article: '4.6' });
    expect(JSON.stringify(strike.evidence)).toMatch(/Test\.EICAR/);
    // The log says each step under the reference of the message that took it, as the transaction line does.
    const refs = a.logs.filter((l) => l.event === 'transaction' && l.account === 'user1@example.test').map((l) => l.ref);
    const steps = a.logs.filter((l) => l.event === 'notified' || l.event === 'suspended');
    expect(steps.map((l) => l.event)).toEqual(['notified', 'suspended']);
    for (const l of steps) expect(refs).toContain(l.ref);
    expect(steps[1]).toMatchObject({ level: 'warn', account: 'user1@example.test', action: 'suspend_account', by: 'douane', rule: 'malware.found', reason: expect.stringMatching(/^strike total \d+ reached \d+$/) });

    // Reinstatement through the admin API (what `douane accounts reinstate` calls).
    const base = await admin(a);
    const res = await fetch(`${base}/accounts/user1@example.test/reinstate`, { method: 'POST', headers: { 'x-douane-actor': 'cli:tester' } });
    expect(res.status).toBe(200);
    await until('Zimbra active again', () => zimbra.account('user1@example.test')!.status === 'active');
    expect((await send(b, 'user1@example.test', clean('user1@example.test'))).data).toMatch(/^250 /);
    const status = (await (await fetch(`${base}/accounts/user1@example.test`)).json()) as { strikes: { total: number }; suspension: unknown };
    expect(status).toMatchObject({ suspension: null, strikes: { total: 0 } });
    expect(audit(a).some((e) => e.action === 'reinstate' && e.actor === 'cli:tester')).toBe(true);
  });

  it('a lock waiting in the outbox is carried out even when Redis comes back without its data first', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-enforce-lost-'));
    const client = new Redis(redis.url, { maxRetriesPerRequest: 0 });
    const { lifecycle, calls, api } = downLifecycle();
    const state = new RedisEnforcementState(client as never, 'lost');
    const { enforcer, outbox } = enforcement({ dir, state, lifecycle, policy: loadPolicy('policies'), deadlineMs: 1000 });
    try {
      await outbox.start();
      await enforcer.refreshGauge(); // the state's mark, as the gateway sets it at start
      await enforcer.suspend('lost@x.test', 'suspend_account', { by: 'cli:test', reference: 'D-L0ST01', reason: 'malware' });
      await until('a failed try of the lock', () => outbox.jobs().some((j) => j.kind === 'lifecycle' && j.attempts > 0));
      // Redis restarts empty, and the API is back before the next refresh of the known suspensions.
      redis.cli('flushall');
      api.down = false;
      expect(await outbox.idle(3000)).toBe(true);
      expect(calls).toEqual(['lock lost@x.test']);
      expect((await state.account('lost@x.test')).suspension).toMatchObject({ action: 'suspend_account', reference: 'D-L0ST01', lockedBy: 'douane' });
      expect(audit(dir).map((e) => e.action)).not.toContain('lifecycle_superseded');
    } finally {
      await outbox.stop();
      client.disconnect();
    }
  });

  it('a lock waiting in the outbox survives Redis coming back empty while Douane was stopped too', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-enforce-restart-'));
    const knownFile = join(dir, 'known-suspensions.json');
    const { lifecycle, calls, api } = downLifecycle();
    const policy = loadPolicy('policies');
    const first = new Redis(redis.url, { maxRetriesPerRequest: 0 });
    const before = enforcement({ dir, state: new RedisEnforcementState(first as never, 'restart'), lifecycle, policy, deadlineMs: 1000, knownFile });
    await before.outbox.start();
    await before.enforcer.refreshGauge();
    await before.enforcer.suspend('gone@x.test', 'suspend_account', { by: 'cli:test', reference: 'D-REST01', reason: 'malware' });
    await until('a failed try of the lock', () => before.outbox.jobs().some((j) => j.kind === 'lifecycle' && j.attempts > 0));
    await before.outbox.stop();
    first.disconnect();
    // Power cut: Redis comes back without its data, and the API is back.
    redis.cli('flushall');
    api.down = false;
    const second = new Redis(redis.url, { maxRetriesPerRequest: 0 });
    const state = new RedisEnforcementState(second as never, 'restart');
    const after = enforcement({ dir, state, lifecycle, policy, deadlineMs: 1000, knownFile });
    try {
      // As the gateway starts: the outbox first, then the first refresh.
      await after.outbox.start();
      await after.enforcer.refreshGauge();
      expect(await after.outbox.idle(3000)).toBe(true);
      expect(calls).toEqual(['lock gone@x.test']);
      expect((await state.account('gone@x.test')).suspension).toMatchObject({ action: 'suspend_account', reference: 'D-REST01' });
      expect(audit(dir).map((e) => e.action)).not.toContain('lifecycle_superseded');
      expect((JSON.parse(readFileSync(knownFile, 'utf8')) as { suspensions: Record<string, unknown> }).suspensions).toHaveProperty(['gone@x.test']);
    } finally {
      await after.outbox.stop();
      second.disconnect();
    }
  });

  it('an instance restarted after a loss another one restored does not bring back what was reinstated while it was stopped', async () => {
    const lifecycle: LifecycleApi = { kind: 'stub', status: async () => ({ status: 'active' }), suspend: async () => 'locked', reinstate: async () => undefined };
    const policy = loadPolicy('policies');
    const instance = (name: string, client: Redis) => {
      const dir = mkdtempSync(join(tmpdir(), `douane-enforce-${name}-`));
      const knownFile = join(dir, 'known-suspensions.json');
      return { knownFile, ...enforcement({ dir, state: new RedisEnforcementState(client as never, 'two'), lifecycle, policy, deadlineMs: 1000, knownFile }) };
    };
    const clients = [new Redis(redis.url, { maxRetriesPerRequest: 0 }), new Redis(redis.url, { maxRetriesPerRequest: 0 }), new Redis(redis.url, { maxRetriesPerRequest: 0 })];
    try {
      const a = instance('a', clients[0]!);
      const b = instance('b', clients[1]!);
      await a.enforcer.refreshGauge();
      await b.enforcer.refreshGauge();
      await a.enforcer.suspend('lifted@x.test', 'suspend_sending', { by: 'cli:test', reference: 'D-LIFT01', reason: 'spam', until: Date.now() + 86_400_000 });
      await a.enforcer.suspend('kept@x.test', 'suspend_sending', { by: 'cli:test', reference: 'D-KEPT01', reason: 'spam', until: Date.now() + 86_400_000 });
      await b.enforcer.refreshGauge();
      // A stops (its file knows both); B reinstates one; Redis loses everything; B restores what it knows.
      await b.enforcer.reinstate('lifted@x.test', 'cli:test');
      redis.cli('flushall');
      await b.enforcer.refreshGauge();
      const state = new RedisEnforcementState(clients[2] as never, 'two');
      expect((await state.account('kept@x.test')).suspension).toMatchObject({ reference: 'D-KEPT01' });
      expect((await state.account('lifted@x.test')).suspension).toBeUndefined();
      // A starts again on (a copy of) its file. The first MAIL FROM for the lifted account, before any
      // refresh, is not refused on what the file knew.
      const beforeStop = readFileSync(a.knownFile);
      const copy = join(mkdtempSync(join(tmpdir(), 'douane-enforce-copy-')), 'known-suspensions.json');
      writeFileSync(copy, beforeStop);
      const again = enforcement({ dir: mkdtempSync(join(tmpdir(), 'douane-enforce-a2-')), state: new RedisEnforcementState(clients[0] as never, 'two'), lifecycle, policy, deadlineMs: 1000, knownFile: a.knownFile });
      expect((await again.enforcer.lookup('lifted@x.test')).state.suspension).toBeUndefined();
      await again.enforcer.refreshGauge();
      expect((await state.account('lifted@x.test')).suspension).toBeUndefined();
      expect((await state.account('kept@x.test')).suspension).toMatchObject({ reference: 'D-KEPT01' });
      // The same start, with Redis failing once just as it is asked whether the loss was restored: the
      // restore resumed at the next refresh asks again.
      const restarted = new RedisEnforcementState(clients[2] as never, 'two');
      const asked = restarted.restoredAlready.bind(restarted);
      let failures = 1;
      restarted.restoredAlready = () => (failures-- > 0 ? Promise.reject(new Error('Connection is closed.')) : asked());
      const third = enforcement({ dir: mkdtempSync(join(tmpdir(), 'douane-enforce-a3-')), state: restarted, lifecycle, policy, deadlineMs: 1000, knownFile: copy });
      await third.enforcer.refreshGauge();
      await third.enforcer.refreshGauge();
      expect(failures).toBe(-1);
      expect((await state.account('lifted@x.test')).suspension).toBeUndefined();

      // The other order: the restarted instance writes back first, from a file that still has the lifted
      // suspension; the instance that reinstated it lifts it again when it writes back.
      redis.cli('flushall');
      const fourthFile = join(mkdtempSync(join(tmpdir(), 'douane-enforce-a4-')), 'known-suspensions.json');
      writeFileSync(fourthFile, beforeStop);
      const fourth = enforcement({ dir: dirname(fourthFile), state: new RedisEnforcementState(clients[2] as never, 'two'), lifecycle, policy, deadlineMs: 1000, knownFile: fourthFile });
      await fourth.enforcer.refreshGauge();
      expect((await state.account('lifted@x.test')).suspension).toMatchObject({ reference: 'D-LIFT01' });
      await b.enforcer.refreshGauge();
      expect((await state.account('lifted@x.test')).suspension).toBeUndefined();
      expect((await state.account('kept@x.test')).suspension).toMatchObject({ reference: 'D-KEPT01' });
    } finally {
      for (const c of clients) c.disconnect();
    }
  });

  it('an unlock refused for bad admin credentials (a password being changed) is tried again until Zimbra takes it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-enforce-auth-'));
    const account = zimbra.addAccount({ name: 'rotated@example.test' });
    const api = new ZimbraAdminApi({ url: zimbra.url, adminUser: zimbra.adminUser, adminPassword: zimbra.adminPassword, timeoutMs: 2000, metrics: new Metrics({ version: 't', defaultMetrics: false }) });
    const { enforcer, outbox } = enforcement({ dir, state: new MemoryEnforcementState(), lifecycle: api, policy: loadPolicy('policies'), deadlineMs: 2000 });
    const password = zimbra.adminPassword;
    try {
      await outbox.start();
      await enforcer.suspend('rotated@example.test', 'suspend_account', { by: 'cli:test', reference: 'D-ROT001', reason: 'malware' });
      expect(await outbox.idle(3000)).toBe(true);
      expect(account.status).toBe('locked');
      // The admin password changes in Zimbra before it does in Douane's configuration.
      zimbra.adminPassword = 'changed-elsewhere';
      zimbra.expireTokens();
      await enforcer.reinstate('rotated@example.test', 'cli:test');
      await until('a refused try of the unlock', () => audit(dir).some((e) => e.action === 'lifecycle_reinstate_failed'));
      expect(audit(dir).find((e) => e.action === 'lifecycle_reinstate_failed')).toMatchObject({ retrying: true, error: expect.stringMatching(/AUTH_FAILED/) });
      expect(outbox.waiting('lifecycle')).toBe(1);
      zimbra.adminPassword = password;
      expect(await outbox.idle(5000)).toBe(true);
      expect(account.status).toBe('active');
      expect(readdirSync(join(dir, 'outbox', 'failed'))).toEqual([]);
      // Said once, however many tries it took.
      expect(audit(dir).filter((e) => e.action === 'lifecycle_reinstate_failed')).toHaveLength(1);
    } finally {
      await outbox.stop();
    }
  });

  it('Zimbra down: the local block is immediate, and the lock is carried out once Zimbra is back — across a restart', async () => {
    const state = mkdtempSync(join(tmpdir(), 'douane-enforce-state-'));
    const a = await gateway({}, { state_dir: state });
    await zimbra.down();
    for (let i = 0; i < 3; i++) await send(a, 'user3@example.test', eicar('user3@example.test'));
    const after = await send(a, 'user3@example.test', clean('user3@example.test'));
    expect(after.mail).toMatch(/^550 5\.7\.1 Sending is suspended/);
    await until('a retry was attempted', () => a.logs.some((l) => l.event === 'outbox_retry'));
    expect(a.gateway.outbox.jobs().some((j) => j.kind === 'lifecycle')).toBe(true);
    await a.gateway.stop(100);
    gateways.splice(gateways.indexOf(a), 1);

    await zimbra.up();
    const restarted = await gateway({}, { state_dir: state });
    await until('the account is locked after the restart', () => zimbra.account('user3@example.test')!.status === 'locked');
    await until('the outbox is empty', () => restarted.gateway.outbox.jobs().every((j) => j.kind !== 'lifecycle'));
    expect(zimbra.modifications.filter((m) => m.name === 'user3@example.test')).toHaveLength(1);
    expect(restarted.logs.some((l) => l.event === 'outbox_resumed')).toBe(true);
  });

  it('named admin tokens: the audit trail records whose token acted, and a read token cannot act', async () => {
    const a = await gateway();
    const server = new AdminServer(
      {
        address: '127.0.0.1',
        port: 0,
        token: 'full-access-token-0001',
        tokens: [
          { name: 'prometheus', token: 'read-only-token-000001', scope: 'read' },
          { name: 'alice', token: 'alice-personal-token-01', scope: 'act' },
        ],
      },
      a.metrics,
      createLogger({ level: 'silent' }),
    );
    server.setAccounts(a.gateway.enforcer);
    await server.start();
    admins.push(server);
    const call = (token: string, method: string, path: string, actor?: string, body?: unknown) =>
      fetch(`http://127.0.0.1:${server.port}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...(actor ? { 'x-douane-actor': actor } : {}) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });

    // The read token scrapes and looks, and is refused anything that changes state.
    expect((await call('read-only-token-000001', 'GET', '/metrics')).status).toBe(200);
    expect((await call('read-only-token-000001', 'GET', '/accounts/user1@example.test')).status).toBe(200);
    const refused = await call('read-only-token-000001', 'POST', '/accounts/user1@example.test/suspend', 'cli:mallory', { action: 'suspend_sending' });
    expect(refused.status).toBe(403);
    expect(((await refused.json()) as { error: string }).error).toMatch(/^token "prometheus" may only read \(scope read\)/);
    expect((await call('read-only-token-000001', 'POST', '/breaker/reset')).status).toBe(403);
    expect(audit(a).filter((e) => e.action === 'suspend_sending' || e.action === 'circuit_breaker_reset')).toEqual([]);
    expect((await call('not-a-configured-token', 'GET', '/accounts')).status).toBe(401);

    // A named token's holder acts; the audit trail keeps the verified name before what the caller declares.
    expect((await call('alice-personal-token-01', 'POST', '/accounts/user1@example.test/suspend', 'cli:alice', { action: 'suspend_sending', reason: 'complaint' })).status).toBe(200);
    expect((await call('alice-personal-token-01', 'POST', '/accounts/user1@example.test/reinstate')).status).toBe(200);
    // The full-access token: the declared actor, as before; it cannot pass itself off as a named token.
    expect((await call('full-access-token-0001', 'POST', '/accounts/user2@example.test/suspend', 'cli:root', { action: 'suspend_sending', reason: 'complaint' })).status).toBe(200);
    const forged = await call('full-access-token-0001', 'POST', '/accounts/user3@example.test/suspend', 'token:alice (cli:alice)', { action: 'suspend_sending', reason: 'complaint' });
    expect(forged.status).toBe(400);
    expect(((await forged.json()) as { error: string }).error).toMatch(/^X-Douane-Actor may not start with "token:"/);
    const automatic = await call('full-access-token-0001', 'POST', '/accounts/user3@example.test/suspend', 'Douane', { action: 'suspend_sending', reason: 'complaint' });
    expect(automatic.status).toBe(400);
    expect(((await automatic.json()) as { error: string }).error).toMatch(/^X-Douane-Actor may not be "douane"/);
    // Nor by a look-alike, percent-encoded as `douane accounts` sends a name beyond ASCII: a zero-width
    // space, a full-width colon, a control character.
    for (const spelling of ['Token:alice', ' token:alice', 'TOKEN:bob', 'douane%E2%80%8B', '%E2%80%8Btoken:ops', 'token%EF%BC%9Aops', 'douane%00', '%EF%BD%84ouane']) {
      expect((await call('full-access-token-0001', 'POST', '/accounts/user3@example.test/suspend', spelling, { action: 'suspend_sending', reason: 'complaint' })).status, spelling).toBe(400);
    }
    // A blank actor is no actor: the audit trail does not name someone "".
    const blank = await fetch(`http://127.0.0.1:${server.port}/accounts/user4@example.test/suspend`, {
      method: 'POST',
      headers: { authorization: 'Bearer full-access-token-0001', 'content-type': 'application/json', 'x-douane-actor': '  ' },
      body: JSON.stringify({ action: 'suspend_sending', reason: 'complaint' }),
    });
    expect(blank.status).toBe(200);
    // A body that is not JSON, and a duration past ten years (it would be stored, then fail to be audited): 400.
    const garbled = await fetch(`http://127.0.0.1:${server.port}/accounts/user3@example.test/suspend`, { method: 'POST', headers: { authorization: 'Bearer full-access-token-0001' }, body: '{bad' });
    expect(garbled.status).toBe(400);
    expect(((await garbled.json()) as { error: string }).error).toMatch(/^the request body must be a JSON object/);
    for (const forMs of [1e16, -5, 1.5, '7d']) {
      const res = await call('full-access-token-0001', 'POST', '/accounts/user3@example.test/suspend', 'cli:root', { action: 'suspend_sending', reason: 'complaint', for_ms: forMs });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: string }).error).toMatch(/^for_ms must be a whole number of milliseconds/);
    }
    // A misspelt action is refused, not read as the heavier one (a lock in Zimbra).
    for (const action of ['suspend-sending', 'SUSPEND_SENDING', 7]) {
      const res = await call('full-access-token-0001', 'POST', '/accounts/user3@example.test/suspend', 'cli:root', { action, reason: 'complaint' });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: string }).error).toMatch(/^action must be suspend_account \(the default\) or suspend_sending/);
    }
    // Neither a body that is no object nor a misspelt key is read as asking for nothing (the default, a lock).
    const post = (body: string) => fetch(`http://127.0.0.1:${server.port}/accounts/user3@example.test/suspend`, { method: 'POST', headers: { authorization: 'Bearer full-access-token-0001' }, body });
    for (const body of ['"suspend_sending"', '["suspend_sending"]', 'null', '42']) {
      const res = await post(body);
      expect([body, res.status]).toEqual([body, 400]);
      expect(((await res.json()) as { error: string }).error).toMatch(/^the request body must be a JSON object of at most 64 KB: got /);
    }
    for (const body of [{ Action: 'suspend_sending' }, { sending_only: true }]) {
      const res = await post(JSON.stringify(body));
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: string }).error).toBe(`unknown field ${JSON.stringify(Object.keys(body)[0])}; a suspension takes action, for_ms, reason, reference`);
    }
    // A reason that is not text is refused, not replaced by the default; a body past 64 KB is 413.
    const numeric = await post(JSON.stringify({ action: 'suspend_sending', reason: 42 }));
    expect([numeric.status, ((await numeric.json()) as { error: string }).error]).toEqual([400, 'reason must be text (a JSON string)']);
    expect((await post(JSON.stringify({ reason: 'x'.repeat(70_000) }))).status).toBe(413);
    // A path that is not well percent-encoded, or has more to it than a route: 400 and 404, nothing done.
    expect((await call('full-access-token-0001', 'GET', '/accounts/%ZZ')).status).toBe(400);
    expect((await call('full-access-token-0001', 'POST', '/accounts/user3@example.test/suspend/now', 'cli:root', { action: 'suspend_sending' })).status).toBe(404);
    expect(((await (await call('read-only-token-000001', 'GET', '/accounts/user3@example.test')).json()) as { suspension: unknown }).suspension).toBeNull();
    const acted = audit(a).filter((e) => ['suspend_sending', 'reinstate'].includes(String(e.action))).map((e) => [e.action, e.account, e.actor]);
    expect(acted).toEqual([
      ['suspend_sending', 'user1@example.test', 'token:alice (cli:alice)'],
      ['reinstate', 'user1@example.test', 'token:alice'],
      ['suspend_sending', 'user2@example.test', 'cli:root'],
      ['suspend_sending', 'user4@example.test', 'admin-api'],
    ]);
    // An account is one account however its domain is written: suspended in Unicode, found in xn--.
    const idn = `/accounts/${encodeURIComponent('Anna@Bücher.example')}/suspend`;
    expect((await call('full-access-token-0001', 'POST', idn, 'cli:root', { action: 'suspend_sending', reason: 'complaint' })).status).toBe(200);
    const status = (await (await call('read-only-token-000001', 'GET', '/accounts/anna@xn--bcher-kva.example')).json()) as { suspension: { action: string } | null };
    expect(status.suspension).toMatchObject({ action: 'suspend_sending' });
    // Half an emoji (a form that cut it) is kept as a replacement character: the text stays well formed,
    // and the account can still be locked on top of it.
    expect((await call('full-access-token-0001', 'POST', '/accounts/user5@example.test/suspend', 'cli:root', { action: 'suspend_sending', reason: 'complaint \ud83d', reference: 'case \udc00 7' })).status).toBe(200);
    const odd = (await (await call('read-only-token-000001', 'GET', '/accounts/user5@example.test')).json()) as { suspension: { reason: string; reference: string } };
    expect(odd.suspension).toMatchObject({ reason: 'complaint \ufffd', reference: 'case \ufffd 7' });
    expect((await call('full-access-token-0001', 'POST', '/accounts/user5@example.test/suspend', 'cli:root', { reason: 'phishing' })).status).toBe(200);
  });

  it('reinstating an account whose name holds "*" or "?" clears its own claims only (Redis patterns are escaped)', async () => {
    const client = new Redis(redis.url);
    try {
      const state = new RedisEnforcementState(client, 'douane');
      for (const account of ['a@x.test', 'b@y.test', '*@*']) expect(await state.claim(claimKey('step', account, '20'), 60_000)).toBe(true);
      await state.resetAccount('*@*');
      // The others' ladder steps are still taken; the odd account's is free again.
      expect(await state.claim(claimKey('step', 'a@x.test', '20'), 60_000)).toBe(false);
      expect(await state.claim(claimKey('step', 'b@y.test', '20'), 60_000)).toBe(false);
      expect(await state.claim(claimKey('step', '*@*', '20'), 60_000)).toBe(true);
    } finally {
      client.disconnect();
    }
  });

  it('a ladder step claim is held for the window once taken, and given back when its step failed', async () => {
    const client = new Redis(redis.url);
    try {
      const state = new RedisEnforcementState(client, 'douane');
      const taken = claimKey('step', 'held@x.test', '1');
      const failed = claimKey('step', 'failed@x.test', '1');
      expect(await state.claim(taken, 50)).toBe(true);
      await state.holdClaim(taken, 60_000);
      expect(await state.claim(failed, 60_000)).toBe(true);
      await state.dropClaim(failed);
      await new Promise((r) => setTimeout(r, 100)); // the first claim's own 50 ms are over
      expect(await state.claim(taken, 60_000)).toBe(false);
      expect(await state.claim(failed, 60_000)).toBe(true);
      // Removed by a reinstatement while its step was taken: holding it does not bring it back.
      const lifted = claimKey('step', 'lifted@x.test', '1');
      expect(await state.claim(lifted, 60_000)).toBe(true);
      await state.resetAccount('lifted@x.test');
      await state.holdClaim(lifted, 60_000);
      expect(await state.claim(lifted, 60_000)).toBe(true);
    } finally {
      client.disconnect();
    }
  });

  it('sending suspended for longer is not cut short by a shorter suspension, in Redis as in memory', async () => {
    const client = new Redis(redis.url);
    try {
      const { MemoryEnforcementState } = await import('../../src/enforce/state.js');
      const now = Date.now();
      const sending = (reference: string, until?: number) => ({ action: 'suspend_sending' as const, since: now, until, reason: 'r', reference, by: 'douane' });
      for (const state of [new RedisEnforcementState(client, 'douane'), new MemoryEnforcementState()]) {
        expect(await state.setSuspension('long@x.test', sending('D-NOEND'))).toMatchObject({ reference: 'D-NOEND' });
        expect(await state.setSuspension('long@x.test', sending('D-DAY', now + 86_400_000))).toMatchObject({ reference: 'D-NOEND' });
        expect(await state.setSuspension('week@x.test', sending('D-WEEK', now + 7 * 86_400_000))).toMatchObject({ reference: 'D-WEEK' });
        expect(await state.setSuspension('week@x.test', sending('D-DAY', now + 86_400_000))).toMatchObject({ reference: 'D-WEEK' });
        // A longer one, or one with no end, replaces a shorter one; a lock replaces any.
        expect(await state.setSuspension('week@x.test', sending('D-MONTH', now + 30 * 86_400_000))).toMatchObject({ reference: 'D-MONTH' });
        expect(await state.setSuspension('week@x.test', sending('D-NOEND2'))).toMatchObject({ reference: 'D-NOEND2' });
        expect(await state.setSuspension('long@x.test', { ...sending('D-LOCK'), action: 'suspend_account' })).toMatchObject({ reference: 'D-LOCK' });
        expect((await state.account('week@x.test')).suspension).toMatchObject({ reference: 'D-NOEND2' });
      }
    } finally {
      client.disconnect();
    }
  });

  it('a lock still waiting in the outbox does not land after the account was reinstated', async () => {
    const a = await gateway();
    const base = await admin(a);
    await zimbra.down();
    const post = (path: string, body: unknown = {}) => fetch(`${base}${path}`, { method: 'POST', headers: { 'x-douane-actor': 'cli:tester', 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect((await post('/accounts/user2@example.test/suspend', { action: 'suspend_account', reason: 'phishing complaint' })).status).toBe(200);
    await until('the lock is retrying', () => a.logs.some((l) => l.event === 'outbox_retry'));
    expect((await post('/accounts/user2@example.test/reinstate')).status).toBe(200);
    await zimbra.up();
    await until('the outbox is empty', () => a.gateway.outbox.jobs().every((j) => j.kind !== 'lifecycle'), 10_000);
    await a.gateway.outbox.idle();
    expect(zimbra.account('user2@example.test')!.status).toBe('active');
    expect(zimbra.modifications.filter((m) => m.name === 'user2@example.test' && m.attrs.zimbraAccountStatus?.includes('locked'))).toEqual([]);
  });

  it('an alias suspended while Zimbra was down (kept under the alias) is shown, unlocked and lifted by reinstating the alias or the account once Zimbra is back', async () => {
    // Two accounts: one reinstated by its alias, the other by its own name. (Once an alias was resolved, it
    // is known: a suspension made later goes to the account.)
    const pairs = [
      { account: 'joe@example.test', alias: 'jo@example.test', reinstateAs: 'jo@example.test' },
      { account: 'ann@example.test', alias: 'an@example.test', reinstateAs: 'ann@example.test' },
    ];
    for (const p of pairs) zimbra.addAccount({ name: p.account, aliases: [p.alias] });
    const a = await gateway();
    const base = await admin(a);
    const post = (path: string, body: unknown = {}) => fetch(`${base}${path}`, { method: 'POST', headers: { 'x-douane-actor': 'cli:tester', 'content-type': 'application/json' }, body: JSON.stringify(body) });
    for (const { account, alias, reinstateAs } of pairs) {
      await zimbra.down();
      // An abuse report names the alias; whose it is cannot be asked now.
      expect((await post(`/accounts/${alias}/suspend`, { action: 'suspend_account', reason: 'spam complaint' })).status).toBe(200);
      await zimbra.up();
      await until('the lock was carried out', () => zimbra.account(account)!.status === 'locked', 10_000);
      // The alias is its account's again: the status, asked by either name, says what is kept under the alias.
      for (const asked of [alias, account]) {
        const status = (await (await fetch(`${base}/accounts/${asked}`)).json()) as Record<string, unknown>;
        expect(status, asked).toMatchObject({ account, suspension: null, kept_under_aliases: { [alias]: { account: alias, suspension: { action: 'suspend_account' } } } });
      }
      expect((await post(`/accounts/${reinstateAs}/reinstate`)).status).toBe(200);
      await until('the unlock was carried out', () => zimbra.account(account)!.status === 'active', 10_000);
      expect((await a.gateway.enforcer.status(alias)).suspension, reinstateAs).toBeNull();
      expect(((await (await fetch(`${base}/accounts`)).json()) as { suspended: string[] }).suspended).toEqual([]);
    }
  });

  it('reinstating never unlocks what Douane did not lock; a lock has no end date', async () => {
    const a = await gateway();
    const base = await admin(a);
    zimbra.account('user4@example.test')!.status = 'locked'; // locked by the provider's own staff
    // The policy's rule refuses it with its own sentence, which names whom to write to.
    expect((await send(a, 'user4@example.test', clean('user4@example.test'))).mail).toMatch(/^550 5\.7\.1 This account \(user4@example\.test\) is locked and cannot send mail; contact abuse@provider\.test\. Ref D-[0-9A-Z]{6}, rule account\.locked, art\. 4\.6\.$/);
    const post = (path: string, body: unknown = {}) => fetch(`${base}${path}`, { method: 'POST', headers: { 'x-douane-actor': 'cli:tester', 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect((await post('/accounts/user4@example.test/suspend', { action: 'suspend_sending', reason: 'complaint', for_ms: 3_600_000 })).status).toBe(200);
    expect((await post('/accounts/user4@example.test/reinstate')).status).toBe(200);
    await a.gateway.outbox.idle();
    expect(zimbra.account('user4@example.test')!.status).toBe('locked');
    expect(zimbra.modifications.filter((m) => m.name === 'user4@example.test')).toEqual([]);
    const timed = await post('/accounts/user3@example.test/suspend', { action: 'suspend_account', for_ms: 60_000 });
    expect(timed.status).toBe(400);
    expect(((await timed.json()) as { error: string }).error).toMatch(/lasts until reinstated/);
  });

  it('a lock Douane finds already set (by the provider staff) is left locked when the account is reinstated here', async () => {
    const a = await gateway();
    const base = await admin(a);
    zimbra.account('user4@example.test')!.status = 'locked';
    const post = (path: string, body: unknown = {}) => fetch(`${base}${path}`, { method: 'POST', headers: { 'x-douane-actor': 'cli:tester', 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect((await post('/accounts/user4@example.test/suspend', { action: 'suspend_account', reason: 'phishing complaint' })).status).toBe(200);
    await until('the lock was carried out', () => audit(a).some((e) => e.action === 'lifecycle_already_locked' && e.account === 'user4@example.test'));
    expect((await post('/accounts/user4@example.test/reinstate')).status).toBe(200);
    await a.gateway.outbox.idle();
    expect(zimbra.account('user4@example.test')!.status).toBe('locked');
    expect(zimbra.modifications.filter((m) => m.name === 'user4@example.test')).toEqual([]);
    expect(audit(a).some((e) => e.action === 'lifecycle_locked' && e.account === 'user4@example.test')).toBe(false);
    expect(audit(a).find((e) => e.action === 'reinstate' && e.account === 'user4@example.test')).toMatchObject({ unlock: false });
  });

  it('an account Douane locked and is asked to lock again is still unlocked when reinstated', async () => {
    const a = await gateway();
    const base = await admin(a);
    const post = (path: string, body: unknown = {}) => fetch(`${base}${path}`, { method: 'POST', headers: { 'x-douane-actor': 'cli:tester', 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect((await post('/accounts/user3@example.test/suspend', { action: 'suspend_account', reason: 'phishing complaint' })).status).toBe(200);
    await a.gateway.outbox.idle();
    expect(zimbra.account('user3@example.test')!.status).toBe('locked');
    // A second complaint: Zimbra answers that the account is locked already, by Douane itself.
    expect((await post('/accounts/user3@example.test/suspend', { action: 'suspend_account', reason: 'second complaint' })).status).toBe(200);
    await a.gateway.outbox.idle();
    expect((await post('/accounts/user3@example.test/reinstate')).status).toBe(200);
    await a.gateway.outbox.idle();
    expect(zimbra.account('user3@example.test')!.status).toBe('active');
    expect(audit(a).some((e) => e.action === 'lifecycle_already_locked' && e.account === 'user3@example.test')).toBe(false);
  });

  it('reads account status from Zimbra: a closed account is refused at MAIL FROM (art. 8)', async () => {
    zimbra.account('user4@example.test')!.status = 'closed';
    const a = await gateway();
    expect((await send(a, 'user4@example.test', clean('user4@example.test'))).mail).toMatch(/^550 5\.7\.1 This account is closed and can no longer send mail\..*rule account\.closed, art\. 8\.$/);
  });
});

describe('one account, however its owner logs in', () => {
  it('a login by alias or bare name, or a webmail sending as an alias, is the Zimbra account it belongs to: its suspension holds', async () => {
    // Zimbra takes any address of an account as its login, and a bare name in its default domain.
    await Promise.all([zimbra.stop(), upstream.stop()]);
    zimbra = await FakeZimbra.start({ defaultDomain: 'example.test' });
    zimbra.addAccount({ name: 'joe@example.test', aliases: ['jo@example.test'] });
    await upstream.stop();
    upstream = await FakeUpstream.start({ users: { 'joe@example.test': 'pw', 'jo@example.test': 'pw', joe: 'pw' } });
    // Zimbra's own timeout past Douane's deadline (2 s), so that a hanging Zimbra is not answered from the cache.
    const a = await gateway({}, { lifecycle: { adapter: 'zimbra', timeout: '6s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword } } });
    await a.gateway.enforcer.suspend('joe@example.test', 'suspend_sending', { by: 'cli:tester', reference: 'D-ALIAS1', reason: 'test' });
    for (const login of ['joe@example.test', 'jo@example.test', 'joe']) {
      const c = await RawSmtp.connect(a.port('submissions'), { tls: true });
      await c.reply();
      await c.command('EHLO t');
      expect(await c.command(`AUTH PLAIN ${Buffer.from(`\0${login}\0pw`).toString('base64')}`)).toMatch(/^235/);
      // Suspended by hand: the refusal names the contract's article on suspension.
      expect(await c.command('MAIL FROM:<jo@example.test>'), login).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(joe@example\.test\).* Ref D-[0-9A-Z]{6}, rule enforcement\.suspension, art\. 4\.6\.$/);
      c.close();
    }
    // A webmail on the trusted listener sending as the alias: the same account.
    expect((await send(a, 'jo@example.test', clean('jo@example.test'))).mail).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(joe@example\.test\)/);
    expect(a.logs.filter((l) => l.event === 'account_resolved').map((l) => [l.login, l.account])).toEqual([
      ['jo@example.test', 'joe@example.test'],
      ['joe', 'joe@example.test'],
      ['jo@example.test', 'joe@example.test'],
    ]);
    // The AUTH lines name the account each login was, next to the login as typed.
    expect(a.logs.filter((l) => l.event === 'auth').map((l) => [l.result, l.login, l.account])).toEqual([
      ['success', 'joe@example.test', 'joe@example.test'],
      ['success', 'jo@example.test', 'joe@example.test'],
      ['success', 'joe', 'joe@example.test'],
    ]);
    // Only the suspension's notices went out, none of joe's mail.
    expect(upstream.messages.filter((m) => m.user !== undefined)).toEqual([]);

    // Once known, whose an alias is does not wait for Zimbra: here it hangs (the login and MAIL FROM still
    // go through, MAIL FROM after its deadline for the status, which is then unknown).
    await zimbra.failNext(20, 'timeout');
    const c = await RawSmtp.connect(a.port('submissions'), { tls: true });
    await c.reply();
    await c.command('EHLO t');
    expect(await c.command(`AUTH PLAIN ${Buffer.from('\0jo@example.test\0pw').toString('base64')}`)).toMatch(/^235/);
    expect(await c.command('MAIL FROM:<jo@example.test>')).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(joe@example\.test\)/);
    c.close();
  });

  it('an alias one instance resolved is its account on another while Zimbra does not answer: the suspension holds', async () => {
    zimbra.addAccount({ name: 'joe@example.test', aliases: ['jo@example.test'] });
    await upstream.stop();
    upstream = await FakeUpstream.start({ users: { 'jo@example.test': 'pw' } });
    const lifecycle = { adapter: 'zimbra', timeout: '1s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword } };
    const login = async (gw: TestGateway) => {
      const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
      await c.reply();
      await c.command('EHLO t');
      expect(await c.command(`AUTH PLAIN ${Buffer.from('\0jo@example.test\0pw').toString('base64')}`)).toMatch(/^235/);
      const mail = await c.command('MAIL FROM:<jo@example.test>');
      c.close();
      return mail;
    };
    const a = await gateway({}, { lifecycle });
    expect(await login(a)).toMatch(/^250 /);
    await a.gateway.enforcer.suspend('joe@example.test', 'suspend_sending', { by: 'cli:tester', reference: 'D-ALIAS2', reason: 'test' });
    // Another instance (or this one restarted) that never asked Zimbra about jo, while Zimbra is down.
    const b = await gateway({}, { lifecycle });
    await zimbra.down();
    expect(await login(b)).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(joe@example\.test\)/);
    expect(b.logs.some((l) => l.event === 'account_resolved_from_state' && l.login === 'jo@example.test' && l.account === 'joe@example.test')).toBe(true);
  });

  it('while Zimbra is down, a sender that may be an alias is asked to retry, not refused as a spoofer nor struck', async () => {
    zimbra.addAccount({ name: 'joe@example.test', aliases: ['sales@example.test'] });
    await upstream.stop();
    upstream = await FakeUpstream.start({ users: { 'joe@example.test': 'pw' } });
    const a = await gateway({}, { policy: { dir: 'policies', watch: false }, lifecycle: { adapter: 'zimbra', timeout: '1s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword } } });
    await zimbra.down();
    const c = await RawSmtp.connect(a.port('submissions'), { tls: true });
    await c.reply();
    await c.command('EHLO t');
    expect(await c.command(`AUTH PLAIN ${Buffer.from('\0joe@example.test\0pw').toString('base64')}`)).toMatch(/^235/);
    for (let i = 0; i < 8; i++) {
      expect(await c.command('MAIL FROM:<sales@example.test>')).toMatch(/^451 4\.4\.3 The addresses of your account cannot be checked right now \(sales@example\.test\); .*Ref D-[0-9A-Z]{6}/);
    }
    // Its own address needs no alias: it goes. A From: with the alias is asked to retry the same way.
    expect(await c.command('MAIL FROM:<joe@example.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<someone@example.net>')).toMatch(/^250 /);
    await c.command('DATA');
    c.write('From: sales@example.test\r\nSubject: offer\r\n\r\nhello\r\n.\r\n');
    expect(await c.reply()).toMatch(/^451 4\.4\.3 The addresses of your account cannot be checked right now \(sales@example\.test\);.*Ref D-[0-9A-Z]{6}/);
    expect((await a.gateway.enforcer.strikes('joe@example.test')).strikes).toEqual([]);
    expect((await a.gateway.enforcer.status('joe@example.test')).suspension).toBeNull();
    // Back: the alias is known again and the sender goes.
    await zimbra.up();
    expect(await c.command('MAIL FROM:<sales@example.test>')).toMatch(/^250 /);
    c.close();
  });

  it('while Zimbra is down, an account no rule would refuse for its sender (a trusted submitter) still sends as others', async () => {
    const { cpSync, mkdtempSync, readFileSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    const allow = join(dir, 'allowlists.yaml');
    writeFileSync(allow, readFileSync(allow, 'utf8').replace('    - support-desk@dstorage.example', '    - support-desk@dstorage.example\n    - desk@example.test'));
    zimbra.addAccount({ name: 'desk@example.test' });
    await upstream.stop();
    upstream = await FakeUpstream.start({ users: { 'desk@example.test': 'pw' } });
    const a = await gateway({}, { policy: { dir, watch: false }, lifecycle: { adapter: 'zimbra', timeout: '1s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword } } });
    await zimbra.down();
    const c = await RawSmtp.connect(a.port('submissions'), { tls: true });
    await c.reply();
    await c.command('EHLO t');
    expect(await c.command(`AUTH PLAIN ${Buffer.from('\0desk@example.test\0pw').toString('base64')}`)).toMatch(/^235/);
    expect(await c.command('MAIL FROM:<customer-42@client.example>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<someone@example.net>')).toMatch(/^250 /);
    await c.command('DATA');
    c.write('From: customer-42@client.example\r\nSubject: your ticket\r\n\r\nanswered\r\n.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    c.close();
  });

  it('a person acting on an alias (from an abuse report) acts on its account', async () => {
    zimbra.addAccount({ name: 'ann@example.test', aliases: ['contact@example.test'] });
    const a = await gateway();
    const base = await admin(a);
    const post = (path: string, body: unknown) => fetch(`${base}${path}`, { method: 'POST', headers: { 'x-douane-actor': 'cli:tester', 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect((await post('/accounts/contact@example.test/suspend', { action: 'suspend_sending', reason: 'complaint' })).status).toBe(200);
    expect(((await (await fetch(`${base}/accounts/ann@example.test`)).json()) as { suspension?: { action: string } }).suspension).toMatchObject({ action: 'suspend_sending' });
    expect((await send(a, 'ann@example.test', clean('ann@example.test'))).mail).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(ann@example\.test\)/);
    expect((await post('/accounts/CONTACT@example.test/reinstate', {})).status).toBe(200);
    expect((await send(a, 'ann@example.test', clean('ann@example.test'))).data).toMatch(/^250 /);
  });
});

describe('safeguards', () => {
  it('never suspends an account on the allowlist, but tells the abuse team', async () => {
    const a = await gateway();
    for (let i = 0; i < 3; i++) await send(a, 'postmaster@example.test', eicar('postmaster@example.test'));
    await until('audited', () => audit(a).some((e) => e.action === 'suspension_skipped'));
    expect((await send(a, 'postmaster@example.test', clean('postmaster@example.test'))).data).toMatch(/^250 /);
    await a.gateway.outbox.idle();
    expect(zimbra.modifications).toHaveLength(0);
    const told = await Promise.all(upstream.messages.filter((m) => m.to.includes('abuse-team@provider.test')).map((m) => simpleParser(m.raw)));
    expect(told.map((m) => m.subject)).toContainEqual(expect.stringMatching(/^\[douane\] suspension skipped \(never-suspend allowlist\): postmaster@example\.test \(D-[0-9A-Z]{6}\)$/));
    expect(told.find((m) => m.subject?.includes('suspension skipped'))!.text).toMatch(/would have: suspend_(sending|account)/);
    expect(a.logs.find((l) => l.event === 'suspension_skipped')).toMatchObject({ level: 'info', account: 'postmaster@example.test', ref: expect.stringMatching(/^D-/), why: 'allowlists.never_suspend' });
  });

  it('dry run: audits what it would do and does nothing', async () => {
    const a = await gateway({ dry_run: true });
    for (let i = 0; i < 3; i++) await send(a, 'user1@example.test', eicar('user1@example.test'));
    await until('audited', () => audit(a).some((e) => e.action === 'suspension_dry_run'));
    expect((await send(a, 'user1@example.test', clean('user1@example.test'))).data).toMatch(/^250 /);
    expect(zimbra.modifications).toHaveLength(0);
  });

  it('approval mode: the suspension waits for a person, then is carried out', async () => {
    const a = await gateway({ approval: true });
    const base = await admin(a);
    for (let i = 0; i < 3; i++) await send(a, 'user2@example.test', eicar('user2@example.test'));
    await until('pending', async () => ((await (await fetch(`${base}/accounts`)).json()) as { pending_approval: string[] }).pending_approval.includes('user2@example.test'));
    expect((await send(a, 'user2@example.test', clean('user2@example.test'))).data).toMatch(/^250 /);
    expect(a.logs.find((l) => l.event === 'suspension_pending')).toMatchObject({ level: 'warn', account: 'user2@example.test', ref: expect.stringMatching(/^D-/) });
    const res = await fetch(`${base}/accounts/user2@example.test/approve`, { method: 'POST', headers: { 'x-douane-actor': 'cli:lead' } });
    expect(res.status).toBe(200);
    expect((await send(a, 'user2@example.test', clean('user2@example.test'))).mail).toMatch(/^550 5\.7\.1 Sending is suspended/);
    await until('locked', () => zimbra.account('user2@example.test')!.status === 'locked');
    expect(audit(a).find((e) => e.action === 'approve')).toMatchObject({ actor: 'cli:lead', account: 'user2@example.test' });
  });

  it('the circuit breaker stops automatic suspension after too many in an hour, until a person resets it', async () => {
    const a = await gateway({ breaker_max_per_hour: 2 });
    const base = await admin(a);
    for (const acct of ['user1@example.test', 'user2@example.test', 'user3@example.test']) {
      for (let i = 0; i < 3; i++) await send(a, acct, eicar(acct));
    }
    await until('breaker open', () => audit(a).some((e) => e.action === 'circuit_breaker_open'));
    expect(a.logs.find((l) => l.event === 'circuit_breaker_open')).toMatchObject({ level: 'error' });
    await until('two locked', () => zimbra.modifications.length === 2);
    await a.gateway.outbox.idle();
    expect(zimbra.modifications).toHaveLength(2);
    expect((await send(a, 'user3@example.test', clean('user3@example.test'))).data).toMatch(/^250 /);
    expect(await a.metrics.registry.metrics()).toMatch(/douane_circuit_breaker_open 1/);
    expect(((await (await fetch(`${base}/breaker`)).json()) as { open: boolean }).open).toBe(true);
    await fetch(`${base}/breaker/reset`, { method: 'POST' });
    expect(await a.metrics.registry.metrics()).toMatch(/douane_circuit_breaker_open 0/);
    // The suspension the breaker held waits for a person, like one in approval mode: approving it locks.
    const held = (await (await fetch(`${base}/accounts/user3@example.test`)).json()) as { pending_approval: { action: string } | null };
    expect(held.pending_approval).toMatchObject({ action: 'suspend_account' });
    expect((await fetch(`${base}/accounts/user3@example.test/approve`, { method: 'POST', headers: { 'x-douane-actor': 'cli:lead' } })).status).toBe(200);
    await until('third locked', () => zimbra.account('user3@example.test')!.status === 'locked');
    // Reset, it counts afresh: the next abuser is locked, not held again by the suspensions counted before.
    for (let i = 0; i < 3; i++) await send(a, 'user4@example.test', eicar('user4@example.test'));
    await until('fourth locked', () => zimbra.account('user4@example.test')!.status === 'locked');
    expect(audit(a).filter((e) => e.action === 'circuit_breaker_open')).toHaveLength(1);
  });

  it('a failing notifier never blocks enforcement; the webhook gets signed events', async () => {
    const events: { body: string; ts: string; sig: string; target: string }[] = [];
    const hook = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        events.push({ body, ts: String(req.headers['x-douane-timestamp']), sig: String(req.headers['x-douane-signature']), target: `${req.method} ${req.url}` });
        res.end('ok');
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (hook.address() as import('node:net').AddressInfo).port;
      const a = await gateway({ notify: { abuse_team: ['abuse-team@provider.test'], smtp: { host: '127.0.0.1', port: 1, secure: false, verify_certificate: false } }, webhook: { url: `http://127.0.0.1:${port}/hook`, secret: 's3cret' } });
      for (let i = 0; i < 3; i++) await send(a, 'user1@example.test', eicar('user1@example.test'));
      await until('locked', () => zimbra.account('user1@example.test')!.status === 'locked');
      await until('webhook', () => events.some((e) => e.body.includes('"suspend_account"')));
      const e = events.find((x) => x.body.includes('"suspend_account"'))!;
      // The recipe of README "Signed requests", written out independently.
      expect(e.target).toBe('POST /hook');
      expect(e.sig).toBe('sha256=' + createHmac('sha256', 's3cret').update(`${e.ts}\nPOST\n/hook\n${e.body}`).digest('hex'));
      expect(JSON.parse(e.body)).toMatchObject({ source: 'douane', type: 'suspend_account', account: 'user1@example.test' });
      expect(a.gateway.outbox.jobs().some((j) => j.kind === 'notify')).toBe(true);
    } finally {
      hook.close();
    }
  });
});
