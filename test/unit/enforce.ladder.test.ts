// The strike ladder on its own (memory state, a real outbox and audit log in a temp dir): steps are taken
// once per window, cooldowns count a burst once, throttles scale limits, the allowlist is honoured.

import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';
import { Enforcer } from '../../src/enforce/enforcer.js';
import { Outbox } from '../../src/enforce/outbox.js';
import { MemoryEnforcementState } from '../../src/enforce/state.js';
import { throttled } from '../../src/limits/throttle.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { loadPolicy } from '../../src/policy/load.js';
import type { StrikeEvent } from '../../src/policy/strikes.js';
import type { LifecycleApi } from '../../src/lifecycle/types.js';
import { LifecycleError } from '../../src/lifecycle/types.js';
import type { Job } from '../../src/enforce/outbox.js';

function setup(overrides: Partial<ConstructorParameters<typeof Enforcer>[0]['settings']> = {}, now: () => number = Date.now, lifecycle?: LifecycleApi, policyDir = 'policies', shared?: MemoryEnforcementState) {
  const dir = mkdtempSync(join(tmpdir(), 'douane-ladder-'));
  const metrics = new Metrics({ version: 't', defaultMetrics: false });
  const log = createLogger({ level: 'silent' });
  const sent: string[] = [];
  const outbox = new Outbox({ dir: join(dir, 'outbox'), handlers: { lifecycle: async () => undefined, notify: async (j) => void sent.push((j.payload as { subject: string }).subject), webhook: async () => undefined, strike: async () => undefined }, minDelayMs: 10, maxDelayMs: 50, metrics, log });
  const state = shared ?? new MemoryEnforcementState(now);
  let policy = loadPolicy(policyDir);
  const enforcer = new Enforcer({
    state,
    outbox,
    audit: new AuditLog(join(dir, 'audit.log')),
    policy: () => policy,
    settings: { dry_run: false, approval: false, breaker_max_per_hour: 10, contact: 'abuse@x.test', provider: 'T', notify_holder: true, abuse_team: ['abuse@x.test'], webhook: false, ...overrides },
    metrics,
    log,
    deadlineMs: 500,
    now,
    lifecycle,
  });
  const strike = (account: string, event: string, weight: number, n = 0): StrikeEvent => ({ account, event, weight, rule: 'r', article: '4.6', reference: `D-00000${n}`, policyVersion: policy.version, evidence: {}, at: now() });
  const reload = (from: string) => void (policy = loadPolicy(from));
  return { enforcer, state, outbox, dir, strike, sent, reload, metrics };
}

describe('strike ladder', () => {
  it('takes each step once as the total climbs (shipped ladder: notify 5, throttle 10, suspend sending 20, lock 30)', async () => {
    const { enforcer, state, strike, dir } = setup();
    await enforcer.record(strike('a@x.test', 'spoofing', 3, 1));
    expect(await state.account('a@x.test')).toEqual({});
    await enforcer.record(strike('a@x.test', 'spoofing', 3, 2)); // 6: notify
    await enforcer.record(strike('a@x.test', 'spoofing', 3, 3)); // 9
    await enforcer.record(strike('a@x.test', 'spoofing', 3, 4)); // 12: throttle
    const throttledState = await state.account('a@x.test');
    expect(throttledState.throttle?.factor).toBe(0.2);
    expect(throttledState.suspension).toBeUndefined();
    await enforcer.record(strike('a@x.test', 'malware', 10, 5)); // 22: suspend sending for 24h
    const s = (await state.account('a@x.test')).suspension!;
    expect(s).toMatchObject({ action: 'suspend_sending', reference: 'D-000005' });
    expect(s.until! - Date.now()).toBeGreaterThan(23 * 3_600_000);
    const actions = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { action: string }).action);
    expect(actions.filter((a) => a === 'notify')).toHaveLength(1);
    expect(actions.filter((a) => a === 'throttle')).toHaveLength(1);
    expect(actions.filter((a) => a === 'suspend_sending')).toHaveLength(1);
    // The evidence: every strike behind the suspension, not only the last one.
    const entry = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { action: string; strikes?: { reference: string; event: string }[] }).find((e) => e.action === 'suspend_sending')!;
    expect(entry.strikes?.map((x) => `${x.reference} ${x.event}`)).toEqual(['D-000001 spoofing', 'D-000002 spoofing', 'D-000003 spoofing', 'D-000004 spoofing', 'D-000005 malware']);
  });

  it('locks the account when abuse resumes after the day of suspended sending (shipped window: a week)', async () => {
    let t = Date.parse('2026-11-02T08:00:00Z');
    const { enforcer, state, strike } = setup({}, () => t);
    await enforcer.record(strike('d@x.test', 'malware', 10, 1));
    await enforcer.record(strike('d@x.test', 'malware', 10, 2)); // 20: suspend sending for 24 h
    expect((await state.account('d@x.test')).suspension).toMatchObject({ action: 'suspend_sending' });
    t += 25 * 3_600_000; // the suspension is over; the account sends again, and again malware
    expect((await state.account('d@x.test')).suspension).toBeUndefined();
    await enforcer.record(strike('d@x.test', 'malware', 10, 3)); // 30 within the week: lock
    expect((await state.account('d@x.test')).suspension).toMatchObject({ action: 'suspend_account', reference: 'D-000003' });
  });

  it('a reload that removes a step leaves the steps already taken as they were: the lock is still reached', async () => {
    let t = Date.parse('2026-11-02T08:00:00Z');
    const { enforcer, state, strike, reload } = setup({}, () => t);
    await enforcer.record(strike('r@x.test', 'malware', 10, 1));
    await enforcer.record(strike('r@x.test', 'malware', 10, 2)); // 20: notify, throttle, suspend sending for 24 h
    expect((await state.account('r@x.test')).suspension).toMatchObject({ action: 'suspend_sending' });
    // The security team drops the notify step.
    const dir = mkdtempSync(join(tmpdir(), 'douane-ladder-policy-'));
    cpSync('policies', dir, { recursive: true });
    const strikes = join(dir, 'strikes.yaml');
    const without = readFileSync(strikes, 'utf8').replace(/^ *- \{ at: 5, action: notify.*\n/m, '');
    expect(without).not.toMatch(/action: notify/);
    writeFileSync(strikes, without);
    reload(dir);
    t += 25 * 3_600_000; // the day of suspended sending is over, and malware comes again within the week
    await enforcer.record(strike('r@x.test', 'malware', 10, 3));
    expect((await state.account('r@x.test')).suspension).toMatchObject({ action: 'suspend_account', reference: 'D-000003' });
  });

  it('approving a suspension weaker than the one in force keeps that one, and the account no longer waits', async () => {
    const { enforcer, state } = setup({ approval: true });
    await enforcer.suspend('w@x.test', 'suspend_account', { by: 'cli:ops', reference: 'D-LOCKED', reason: 'compromised' });
    await state.setPending('w@x.test', { action: 'suspend_sending', at: Date.now(), until: Date.now() + 86_400_000, total: 20, reference: 'D-PENDNG', reason: 'strike total 20 reached 20' });
    expect(await enforcer.approve('w@x.test', 'cli:lead')).toMatchObject({ action: 'suspend_account', reference: 'D-LOCKED' });
    expect(await state.pendingAccounts()).toEqual([]);
    expect((await state.account('w@x.test')).suspension).toMatchObject({ action: 'suspend_account' });
  });

  it('a reload that moves a step\'s threshold does not take the step again', async () => {
    const { enforcer, strike, dir: stateDir, reload } = setup();
    await enforcer.record(strike('m@x.test', 'spoofing', 3, 1));
    await enforcer.record(strike('m@x.test', 'spoofing', 3, 2)); // 6: notify
    const dir = mkdtempSync(join(tmpdir(), 'douane-ladder-policy-'));
    cpSync('policies', dir, { recursive: true });
    const strikes = join(dir, 'strikes.yaml');
    writeFileSync(strikes, readFileSync(strikes, 'utf8').replace('{ at: 5, action: notify', '{ at: 4, action: notify'));
    reload(dir);
    await enforcer.record(strike('m@x.test', 'spoofing', 3, 3)); // 9
    const actions = readFileSync(join(stateDir, 'audit.log'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { action: string }).action);
    expect(actions.filter((a) => a === 'notify')).toHaveLength(1);
  });

  it('sending suspended by a person until further notice is not shortened by the ladder\'s day', async () => {
    let t = Date.parse('2026-11-02T08:00:00Z');
    const { enforcer, state, strike, dir } = setup({}, () => t);
    await enforcer.suspend('p@x.test', 'suspend_sending', { by: 'cli:ops', reference: 'D-PERSON', reason: 'abuse report' });
    await enforcer.record(strike('p@x.test', 'malware', 10, 1));
    await enforcer.record(strike('p@x.test', 'malware', 10, 2)); // 20: the ladder's suspend sending for 24 h
    t += 25 * 3_600_000;
    expect((await state.account('p@x.test')).suspension).toMatchObject({ action: 'suspend_sending', reference: 'D-PERSON', until: undefined });
    const kept = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).filter((e) => e.action === 'suspension_kept');
    expect(kept).toMatchObject([{ kept: 'suspend_sending', asked: 'suspend_sending', reference: 'D-000002' }]);
  });

  it('dry run: no step touches the account or its holder; the audit says what each would have done', async () => {
    const { enforcer, state, strike, outbox, dir } = setup({ dry_run: true });
    for (let i = 0; i < 3; i++) await enforcer.record(strike('e@x.test', 'malware', 10, i));
    expect(await state.account('e@x.test')).toEqual({});
    expect(outbox.jobs().filter((j) => j.kind === 'notify' && (j.payload as { to: string[] }).to.includes('e@x.test'))).toEqual([]);
    const actions = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { action: string }).action);
    expect(actions).toEqual(['strike', 'notify_dry_run', 'throttle_dry_run', 'strike', 'suspension_dry_run', 'strike', 'suspension_dry_run']);
  });

  it('never_suspend listing an alias (Zimbra makes postmaster@ an alias of admin@) protects the account it belongs to', async () => {
    const { FakeZimbra } = await import('../harness/fake-zimbra.js');
    const { ZimbraAdminApi } = await import('../../src/lifecycle/zimbra.js');
    const z = await FakeZimbra.start();
    try {
      z.addAccount({ name: 'admin@dstorage.example', aliases: ['postmaster@dstorage.example'] });
      z.addAccount({ name: 'other@dstorage.example' });
      const api = new ZimbraAdminApi({ url: z.url, adminUser: z.adminUser, adminPassword: z.adminPassword, timeoutMs: 2000, metrics: new Metrics({ version: 't', defaultMetrics: false }) });
      const { enforcer, state, strike, dir } = setup({}, Date.now, api);
      // Strikes are counted under the account's own name, as after a login as postmaster@.
      const account = await enforcer.canonical('postmaster@dstorage.example');
      expect(account).toBe('admin@dstorage.example');
      for (let n = 1; n <= 4; n++) await enforcer.record(strike(account, 'malware', 10, n));
      expect(await state.account(account)).toEqual({});
      const actions = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { action: string }).action);
      expect(actions.filter((a) => a === 'suspension_skipped')).toHaveLength(2);
      // An account that is no alias of a listed address is suspended as before.
      for (let n = 5; n <= 6; n++) await enforcer.record(strike('other@dstorage.example', 'malware', 10, n));
      expect((await state.account('other@dstorage.example')).suspension).toMatchObject({ action: 'suspend_sending' });
    } finally {
      await z.stop();
    }
  });

  it('while the lifecycle API cannot say whose a never_suspend alias is, the ladder waits for a person instead of suspending', async () => {
    const { FakeZimbra } = await import('../harness/fake-zimbra.js');
    const { ZimbraAdminApi } = await import('../../src/lifecycle/zimbra.js');
    const z = await FakeZimbra.start();
    try {
      z.addAccount({ name: 'admin@dstorage.example', aliases: ['postmaster@dstorage.example'] });
      const api = new ZimbraAdminApi({ url: z.url, adminUser: z.adminUser, adminPassword: z.adminPassword, timeoutMs: 300, metrics: new Metrics({ version: 't', defaultMetrics: false }) });
      // Started while Zimbra is down, with nothing kept about whose postmaster@ is.
      await z.down();
      const { enforcer, state, strike, dir, outbox, metrics } = setup({}, Date.now, api);
      for (let n = 1; n <= 4; n++) await enforcer.record(strike('admin@dstorage.example', 'malware', 10, n));
      expect(await metrics.registry.getSingleMetricAsString('douane_suspensions_total')).toMatch(/^douane_suspensions_total\{action="throttle",result="skipped_unverified"\} 1$/m);
      const after = await state.account('admin@dstorage.example');
      expect(after.suspension).toBeUndefined();
      expect(after.throttle).toBeUndefined();
      expect(after.pending).toMatchObject({ action: 'suspend_account' });
      const audit = () => readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { action: string; why?: string });
      expect(audit().filter((e) => e.action === 'suspension_pending' || e.action === 'throttle_skipped').map((e) => e.why)).toEqual(Array(3).fill(expect.stringMatching(/cannot say now whose/)));
      const subjects = outbox.jobs().filter((j) => j.kind === 'notify').map((j) => (j.payload as { subject: string }).subject);
      expect(subjects).toContainEqual(expect.stringMatching(/suspension waiting for approval \(never-suspend allowlist not verifiable\)/));
      // Once Zimbra has answered, the list's aliases are known, and stay known through the next outage.
      await z.up();
      await enforcer.refreshGauge();
      await expect.poll(() => enforcer.known('postmaster@dstorage.example')).toBe('admin@dstorage.example');
      await z.down();
      await enforcer.reinstate('admin@dstorage.example', 'cli:test');
      for (let n = 5; n <= 8; n++) await enforcer.record(strike('admin@dstorage.example', 'malware', 10, n));
      expect(await state.account('admin@dstorage.example')).toEqual({});
      expect(audit().filter((e) => e.action === 'suspension_skipped').map((e) => e.why)).toEqual(['allowlists.never_suspend', 'allowlists.never_suspend']);
    } finally {
      await z.stop();
    }
  });

  it('an instance restarted while the lifecycle API is down still knows the never-suspend list, accounts of their own included', async () => {
    const { FakeZimbra } = await import('../harness/fake-zimbra.js');
    const { ZimbraAdminApi } = await import('../../src/lifecycle/zimbra.js');
    const z = await FakeZimbra.start();
    try {
      // The shipped list: postmaster@ and abuse@, here accounts of their own (no alias to resolve).
      z.addAccount({ name: 'postmaster@dstorage.example' });
      z.addAccount({ name: 'abuse@dstorage.example' });
      z.addAccount({ name: 'spammer@dstorage.example' });
      const api = () => new ZimbraAdminApi({ url: z.url, adminUser: z.adminUser, adminPassword: z.adminPassword, timeoutMs: 300, metrics: new Metrics({ version: 't', defaultMetrics: false }) });
      const before = setup({}, Date.now, api());
      await before.enforcer.refreshGauge();
      await expect.poll(async () => before.state.listedOwner('abuse@dstorage.example')).toBe('abuse@dstorage.example');
      // A failed login under that name, or under any other (the API: no such account), forgets what
      // logins taught, not this.
      await before.state.forgetOwner('abuse@dstorage.example');
      await before.state.forgetOwner('never-suspend:abuse@dstorage.example');
      await z.down();
      // The same shared state, a new process.
      const after = setup({}, Date.now, api(), 'policies', before.state);
      for (let n = 1; n <= 4; n++) await after.enforcer.record(after.strike('spammer@dstorage.example', 'malware', 10, n));
      const s = await before.state.account('spammer@dstorage.example');
      expect(s.suspension).toMatchObject({ action: 'suspend_account' });
      expect(s.pending).toBeUndefined();
    } finally {
      await z.stop();
    }
  });

  it('a throttle held back while the never-suspend list cannot be checked is tried again, and the abuse team told once', async () => {
    let t = 1_000_000_000;
    const lifecycle: LifecycleApi = {
      kind: 'stub',
      status: async () => {
        throw new LifecycleError('unavailable', 'down', true);
      },
      suspend: async () => 'locked',
      reinstate: async () => undefined,
    };
    const { enforcer, state, strike, dir, outbox, metrics } = setup({}, () => t, lifecycle);
    // Ten, then a strike of 2 every quarter of an hour: under the next step (20), each a chance to throttle.
    await enforcer.record(strike('busy@x.test', 'malware', 10, 1));
    for (let n = 2; n <= 5; n++) {
      t += 15 * 60_000;
      await enforcer.record(strike('busy@x.test', 'content_rule', 2, n));
    }
    expect(await metrics.registry.getSingleMetricAsString('douane_suspensions_total')).toMatch(/^douane_suspensions_total\{action="throttle",result="skipped_unverified"\} 5$/m);
    const actions = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { action: string }).action);
    expect(actions.filter((a) => a === 'throttle_skipped')).toHaveLength(1);
    const told = outbox.jobs().filter((j) => j.kind === 'notify' && /throttle skipped/.test((j.payload as { subject: string }).subject));
    expect(told).toHaveLength(1);
    expect((await state.account('busy@x.test')).throttle).toBeUndefined();
    // Telling failed for another account (the outbox's disk): its next chance tells.
    const enqueue = outbox.enqueue.bind(outbox);
    let refuse = 1;
    outbox.enqueue = ((...args: Parameters<typeof enqueue>) => (args[0] === 'notify' && /throttle skipped/.test(JSON.stringify(args[1])) && refuse-- > 0 ? Promise.reject(new Error('ENOSPC')) : enqueue(...args))) as typeof outbox.enqueue;
    await expect(enforcer.record(strike('other@x.test', 'malware', 10, 10))).resolves.toBeUndefined();
    t += 15 * 60_000;
    await enforcer.record(strike('other@x.test', 'content_rule', 2, 11));
    expect(outbox.jobs().filter((j) => j.kind === 'notify' && /throttle skipped.*other@x\.test/.test((j.payload as { subject: string }).subject))).toHaveLength(1);
  });

  it('asks whose the never-suspend list\'s addresses are at start and every hour, so that what is kept of them stays fresh', async () => {
    let t = 1_000_000_000;
    const asked: string[] = [];
    const lifecycle: LifecycleApi = {
      kind: 'stub',
      status: async (a) => {
        asked.push(a);
        return a === 'postmaster@dstorage.example' ? { status: 'active', name: 'admin@dstorage.example' } : { status: 'active' };
      },
      suspend: async () => 'locked',
      reinstate: async () => undefined,
    };
    const { enforcer, state } = setup({}, () => t, lifecycle);
    await enforcer.refreshGauge();
    await expect.poll(() => asked.filter((a) => a === 'postmaster@dstorage.example').length).toBe(1);
    expect(await state.owner('postmaster@dstorage.example')).toBe('admin@dstorage.example');
    t += 10_000;
    await enforcer.refreshGauge();
    t += 3_600_000;
    await enforcer.refreshGauge();
    await expect.poll(() => asked.filter((a) => a === 'postmaster@dstorage.example').length).toBe(2);
  });

  it('approval mode: suspensions waiting for a person do not count towards the circuit breaker', async () => {
    const { enforcer, state, strike } = setup({ approval: true, breaker_max_per_hour: 2 });
    for (const a of ['a', 'b', 'c', 'd']) {
      await enforcer.record(strike(`${a}@x.test`, 'malware', 10, 1));
      await enforcer.record(strike(`${a}@x.test`, 'malware', 10, 2));
    }
    expect((await state.breaker()).open).toBe(false);
    expect(await state.pendingAccounts()).toHaveLength(4);
    // Approved by a person, they are not automatic either.
    for (const a of ['a', 'b', 'c', 'd']) await enforcer.approve(`${a}@x.test`, 'cli:lead');
    expect((await state.breaker()).open).toBe(false);
    expect((await state.account('d@x.test')).suspension).toMatchObject({ action: 'suspend_sending' });
  });

  it('approval mode: a suspension for a day lasts a day from its approval', async () => {
    let t = Date.parse('2026-11-02T08:00:00Z');
    const { enforcer, state, strike } = setup({ approval: true }, () => t);
    await enforcer.record(strike('f@x.test', 'malware', 10, 1));
    await enforcer.record(strike('f@x.test', 'malware', 10, 2)); // 20: suspend sending for 24 h, once approved
    expect((await state.account('f@x.test')).pending).toMatchObject({ action: 'suspend_sending' });
    expect((await state.account('f@x.test')).suspension).toBeUndefined();
    t += 5 * 3_600_000; // a person approves five hours later
    const s = await enforcer.approve('f@x.test', 'cli:lead');
    expect(s.until! - t).toBe(24 * 3_600_000);
    expect((await state.account('f@x.test')).pending).toBeUndefined();
  });

  it('a lifecycle call carries out what is wanted when it runs, not what was wanted when it was queued', async () => {
    const calls: string[] = [];
    const api: LifecycleApi = {
      kind: 'stub',
      status: async () => ({ status: 'active' }) as never,
      suspend: async (a) => void calls.push(`lock ${a}`),
      reinstate: async (a) => void calls.push(`unlock ${a}`),
    };
    const { enforcer, dir } = setup({}, Date.now, api);
    const handler = enforcer.lifecycleHandler();
    const job = (op: 'suspend' | 'reinstate'): Job => ({ id: 'j', kind: 'lifecycle', payload: { op, account: 'g@x.test', reference: 'D-GGGGGG', summary: 's', by: 'cli:t' }, attempts: 1, createdAt: 0, nextAt: 0 });
    await handler(job('suspend')); // queued before a reinstatement another instance carried out
    expect(calls).toEqual([]);
    await enforcer.suspend('g@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-GGGGGG', reason: 'r' });
    await handler(job('reinstate')); // queued before the account was suspended again
    await handler(job('suspend'));
    expect(calls).toEqual(['lock g@x.test']);
    const actions = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { action: string; op?: string });
    expect(actions.filter((a) => a.action === 'lifecycle_superseded').map((a) => a.op)).toEqual(['suspend', 'reinstate']);
  });

  it('a lock found in place is Douane own when an earlier call of its may have made it: a timeout, an unlock not carried out', async () => {
    // Zimbra as the stub: the first lock call times out after the lock was made; every later one finds it.
    let calls = 0;
    let down = false;
    const api: LifecycleApi = {
      kind: 'stub',
      status: async () => ({ status: 'active' }) as never,
      suspend: async () => {
        calls++;
        if (calls === 1) throw new LifecycleError('timeout', 'no answer within 2000 ms', true);
        return 'already_locked';
      },
      reinstate: async () => {
        if (down) throw new LifecycleError('unavailable', 'connection refused', true);
      },
    };
    const { enforcer, state, outbox } = setup({}, Date.now, api);
    const handler = enforcer.lifecycleHandler();
    const job = (account: string, op: 'suspend' | 'reinstate', attempts = 1): Job => ({ id: 'j', kind: 'lifecycle', payload: { op, account, reference: 'D-KKKKKK', summary: 's', by: 'cli:t' }, attempts, createdAt: 0, nextAt: 0 });
    const unlockQueued = (account: string) => outbox.jobs().some((j) => j.kind === 'lifecycle' && (j.payload as { account: string; op: string }).account === account && (j.payload as { op: string }).op === 'reinstate');

    await enforcer.suspend('k@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-KKKKKK', reason: 'r' });
    await expect(handler(job('k@x.test', 'suspend'))).rejects.toThrow(/no answer/);
    // The retry, or a second complaint's new lock job (attempt 1 of its own): the lock found is Douane's.
    await enforcer.suspend('k@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-KKKKK2', reason: 'second complaint' });
    await handler(job('k@x.test', 'suspend'));
    expect((await state.account('k@x.test')).suspension?.lockedBy).toBe('douane');
    // Reinstated while the API is down: the unlock waits; locked again meanwhile, the lock found is still Douane's.
    down = true;
    await enforcer.reinstate('k@x.test', 'cli:t');
    await expect(handler(job('k@x.test', 'reinstate'))).rejects.toThrow(/connection refused/);
    await enforcer.suspend('k@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-KKKKK3', reason: 'third complaint' });
    await handler(job('k@x.test', 'suspend'));
    expect((await state.account('k@x.test')).suspension?.lockedBy).toBe('douane');
    await enforcer.reinstate('k@x.test', 'cli:t');
    expect(unlockQueued('k@x.test')).toBe(true);

    // Found locked with no call of Douane's before: someone else's lock, left as it is.
    await enforcer.suspend('m@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-MMMMMM', reason: 'r' });
    await handler(job('m@x.test', 'suspend'));
    expect((await state.account('m@x.test')).suspension?.lockedBy).toBe('someone_else');
    await enforcer.reinstate('m@x.test', 'cli:t');
    expect(unlockQueued('m@x.test')).toBe(false);
  });

  it('a lock stays a lock: a weaker suspension after it changes nothing, and reinstating still unlocks', async () => {
    const api: LifecycleApi = { kind: 'stub', status: async () => ({ status: 'active' }) as never, suspend: async () => undefined, reinstate: async () => undefined };
    const { enforcer, state, outbox, dir } = setup({}, Date.now, api);
    await enforcer.suspend('h@x.test', 'suspend_account', { by: 'douane', reference: 'D-HHHHH1', reason: 'malware' });
    // A strike of another instance landing late, or a person asking for a day's suspension.
    const kept = await enforcer.suspend('h@x.test', 'suspend_sending', { by: 'cli:t', reference: 'D-HHHHH2', reason: 'complaint', until: Date.now() + 86_400_000 });
    expect(kept).toMatchObject({ action: 'suspend_account', reference: 'D-HHHHH1' });
    expect((await state.account('h@x.test')).suspension).toMatchObject({ action: 'suspend_account' });
    await enforcer.reinstate('h@x.test', 'cli:t');
    // The unlock is queued (the lock itself may have been carried out by the outbox already).
    expect(outbox.jobs().filter((j) => j.kind === 'lifecycle').map((j) => (j.payload as { op: string }).op)).toContain('reinstate');
    const actions = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { action: string });
    expect(actions.map((a) => a.action)).toContain('suspension_kept');
  });

  it('sends a notice to the holder only at one plain address: an account name from a client may be anything', async () => {
    const { enforcer, outbox } = setup();
    for (const name of ['a@x.test,other@elsewhere.example', 'x@v\r\nBcc: spam@t.example', '"q q"@x.test', 'nobody']) {
      await enforcer.suspend(name, 'suspend_sending', { by: 'cli:t', reference: 'D-IIIIII', reason: 'r' });
    }
    await enforcer.suspend('plain.name+tag@x.test', 'suspend_sending', { by: 'cli:t', reference: 'D-JJJJJJ', reason: 'r' });
    const holders = outbox.jobs().filter((j) => j.kind === 'notify' && (j.payload as { channel?: string }).channel === 'holder').map((j) => (j.payload as { to: string[] }).to);
    expect(holders).toEqual([['plain.name+tag@x.test']]);
  });

  it('counts a burst of an event with a cooldown once (limit_reached: 10 minutes)', async () => {
    const { enforcer, strike, metrics } = setup();
    for (let i = 0; i < 20; i++) await enforcer.record(strike('b@x.test', 'limit_reached', 1, i));
    expect((await enforcer.strikes('b@x.test')).total).toBe(1);
    // The metric counts what the audit trail does, not the retries the cooldown dropped.
    expect(await metrics.registry.getSingleMetricAsString('douane_strikes_total')).toMatch(/^douane_strikes_total\{event="limit_reached"\} 1$/m);
  });

  it('never suspends or throttles an allowlisted account, and notices are queued in the outbox', async () => {
    const { enforcer, state, strike, outbox, dir } = setup();
    for (let i = 0; i < 4; i++) await enforcer.record(strike('postmaster@dstorage.example', 'malware', 10, i));
    expect(await state.account('postmaster@dstorage.example')).toEqual({});
    expect(outbox.jobs().some((j) => j.kind === 'notify')).toBe(true);
    const actions = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { action: string }).action);
    expect(actions.filter((a) => a !== 'strike')).toEqual(['notify', 'throttle_skipped', 'suspension_skipped', 'suspension_skipped']);
    const subjects = outbox.jobs().filter((j) => j.kind === 'notify').map((j) => (j.payload as { subject: string }).subject);
    expect(subjects).toContainEqual(expect.stringMatching(/throttle skipped \(never-suspend allowlist\): postmaster@dstorage\.example/));
  });

  it('reinstatement clears the suspension, the throttle and the strikes, so the ladder starts over', async () => {
    const { enforcer, state, strike } = setup();
    for (let i = 0; i < 3; i++) await enforcer.record(strike('c@x.test', 'malware', 10, i));
    expect((await state.account('c@x.test')).suspension?.action).toBe('suspend_account');
    await enforcer.reinstate('c@x.test', 'cli:test');
    expect(await state.account('c@x.test')).toEqual({});
    expect((await enforcer.strikes('c@x.test')).total).toBe(0);
    await enforcer.record(strike('c@x.test', 'spoofing', 3, 9));
    expect((await state.account('c@x.test')).suspension).toBeUndefined();
  });
});

describe('throttle', () => {
  it('scales the rate and volume limits by the factor, never below 1; not the sessions at once nor the recipients of one message', () => {
    const limits = loadPolicy('policies').account('x@example.net').limits;
    const t = throttled(limits, 0.2);
    expect(t.messages_per_hour).toBe(20);
    expect(t.bytes_per_day).toBe(Math.floor(limits.bytes_per_day * 0.2));
    expect(throttled({ ...limits, messages_per_minute: 3 }, 0.2).messages_per_minute).toBe(1);
    expect(t.concurrent_sessions).toBe(limits.concurrent_sessions);
    expect(t.recipients_per_message).toBe(limits.recipients_per_message);
    expect(throttled(limits, undefined)).toBe(limits);
  });
});

describe('strikes the state could not take at once', () => {
  it('a ladder step that fails after the count is taken again from the outbox, even when no strike follows; the strike is not counted twice', async () => {
    const { enforcer, state, strike, outbox, dir } = setup();
    const setThrottle = state.setThrottle.bind(state);
    let failures = 2;
    state.setThrottle = async (a, t) => {
      if (failures-- > 0) throw new Error('disk full');
      return setThrottle(a, t);
    };
    await enforcer.record(strike('t@x.test', 'malware', 10, 1)); // 10: throttle, which fails
    expect((await state.strikes('t@x.test', 7 * 86_400_000)).map((s) => s.reference)).toEqual(['D-000001']);
    expect((await state.account('t@x.test')).throttle).toBeUndefined();
    expect(outbox.waiting('strike')).toBe(1);
    const [job] = [...(outbox as unknown as { pending: Map<string, Job> }).pending.values()].filter((j) => j.kind === 'strike');
    const handle = enforcer.strikeHandler();
    // Failing again fails the job (the outbox tries it later); then the step is taken.
    await expect(handle(job!)).rejects.toThrow('disk full');
    await handle(job!);
    expect((await state.account('t@x.test')).throttle?.factor).toBe(0.2);
    expect((await state.strikes('t@x.test', 7 * 86_400_000)).map((s) => s.reference)).toEqual(['D-000001']);
    const audit = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { action: string });
    expect(audit.filter((a) => a.action === 'strike')).toHaveLength(1);
  });

  it('one that could not be counted waits in the outbox; counted later once, or not at all after a reinstatement', async () => {
    const { enforcer, state, strike, outbox } = setup();
    const addStrike = state.addStrike.bind(state);
    let down = true;
    state.addStrike = async (...args) => {
      if (down) throw new Error('Stream isn\'t writeable');
      return addStrike(...args);
    };
    await enforcer.record(strike('d@x.test', 'malware', 10, 1));
    await enforcer.record(strike('r@x.test', 'malware', 10, 2));
    expect(outbox.waiting('strike')).toBe(2);
    down = false;
    const handle = enforcer.strikeHandler();
    const jobs = (outbox as unknown as { pending: Map<string, Job> }).pending;
    const [forD, forR] = [...jobs.values()].filter((j) => j.kind === 'strike');
    await enforcer.reinstate('r@x.test', 'cli:test');
    // Counted once, even replayed twice (a failure after the count sends it round again).
    await handle(forD!);
    await handle(forD!);
    expect((await state.strikes('d@x.test', 7 * 86_400_000)).map((s) => s.reference)).toEqual(['D-000001']);
    expect((await state.account('d@x.test')).throttle?.factor).toBe(0.2);
    // From before the reinstatement: forgiven with the rest.
    await handle(forR!);
    expect(await state.strikes('r@x.test', 7 * 86_400_000)).toEqual([]);
    expect(await state.account('r@x.test')).toEqual({});
  });

  it('MAIL FROM asks whether the state was lost within its deadline; unanswered, the suspension seen before holds', async () => {
    const { enforcer, state } = setup();
    await enforcer.suspend('s@x.test', 'suspend_sending', { by: 'cli:test', reference: 'D-HOLD01', reason: 'complaint' });
    expect((await enforcer.lookup('s@x.test')).state.suspension).toMatchObject({ reference: 'D-HOLD01' });
    // The state answers that read without the suspension, then freezes on the next.
    state.account = async () => ({});
    state.lost = () => new Promise<boolean>(() => undefined);
    const looked = await enforcer.lookup('s@x.test');
    expect(looked.state.suspension).toMatchObject({ reference: 'D-HOLD01' });
  });

  it('an instance restarted while the shared state does not answer knows the suspensions its last run saw, and says when it knows none', async () => {
    const knownFile = join(mkdtempSync(join(tmpdir(), 'douane-known-')), 'known-suspensions.json');
    const make = (state: MemoryEnforcementState) =>
      new Enforcer({
        state,
        outbox: new Outbox({ dir: join(mkdtempSync(join(tmpdir(), 'douane-ob-')), 'outbox'), handlers: { lifecycle: async () => undefined, notify: async () => undefined, webhook: async () => undefined, strike: async () => undefined }, minDelayMs: 10, maxDelayMs: 50, metrics: new Metrics({ version: 't', defaultMetrics: false }), log: createLogger({ level: 'silent' }) }),
        audit: new AuditLog(join(mkdtempSync(join(tmpdir(), 'douane-au-')), 'audit.log')),
        policy: () => loadPolicy('policies'),
        settings: { dry_run: false, approval: false, breaker_max_per_hour: 10, contact: 'abuse@x.test', provider: 'T', notify_holder: false, abuse_team: [], webhook: false },
        metrics: new Metrics({ version: 't', defaultMetrics: false }),
        log: createLogger({ level: 'silent' }),
        deadlineMs: 300,
        knownFile,
      });
    // A write that a crash cut short left its temporary file: the next start removes it, and nothing else.
    const dir = dirname(knownFile);
    writeFileSync(join(dir, '.known-suspensions.json.0badf00d.tmp'), '{"suspensions":');
    writeFileSync(join(dir, '.other.json.0badf00d.tmp'), 'not ours');
    const shared = new MemoryEnforcementState();
    const running = make(shared);
    expect(readdirSync(dir).sort()).toEqual(['.other.json.0badf00d.tmp']);
    await running.suspend('spammer@x.test', 'suspend_sending', { by: 'cli:test', reference: 'D-KNOWN1', reason: 'spam' });
    await running.refreshGauge();
    // Restarted while the shared state does not answer.
    const down = new MemoryEnforcementState();
    down.account = () => Promise.reject(new Error('Command timed out'));
    const restarted = make(down);
    const looked = await restarted.lookup('spammer@x.test');
    expect(looked.state.suspension).toMatchObject({ action: 'suspend_sending', reference: 'D-KNOWN1' });
    expect(looked.suspensionsUnknown).toBeUndefined();
    // One whose file is damaged knows nothing either, and says so.
    writeFileSync(knownFile, '{"suspensions": {"spammer@x.te');
    expect(await make(down).lookup('spammer@x.test')).toMatchObject({ state: {}, suspensionsUnknown: true });
    // A new instance, with nothing kept, cannot tell, and says so in the transaction's evidence.
    rmSync(knownFile);
    const fresh = await make(down).lookup('spammer@x.test');
    expect(fresh).toMatchObject({ state: {}, suspensionsUnknown: true });
    const { mailAccountStatus } = await import('../../src/pipeline/checks/mail.account-status.js');
    const verdict = await mailAccountStatus.run({ session: { account: 'spammer@x.test' }, tx: { mailFrom: 'spammer@x.test', policy: { definesPlan: () => true } }, deps: { accounts: { lookup: async () => fresh } }, config: {} } as never);
    expect(verdict).toMatchObject({ action: 'continue', evidence: { suspensions: expect.stringMatching(/^unknown/) } });
  });

  it('a strike counted again keeps its own cooldown claim, on the file state too', async () => {
    const { FileEnforcementState } = await import('../../src/enforce/state.js');
    const file = new FileEnforcementState(join(mkdtempSync(join(tmpdir(), 'douane-claim-')), 'enforcement.json'));
    expect([await file.claim('k', 60_000, 's-1'), await file.claim('k', 60_000, 's-1'), await file.claim('k', 60_000, 's-2'), await file.claim('k', 60_000)]).toEqual([true, true, false, false]);
  });
});
