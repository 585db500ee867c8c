// Two instances (or two sessions) acting on one account at once, sharing one enforcement state: a lock is
// never replaced by a weaker suspension, and a reinstatement while a lock call is under way leaves the
// account unlocked in the lifecycle API.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/enforce/outbox.js';
import { MemoryEnforcementState, type Suspension } from '../../src/enforce/state.js';
import { LifecycleError, type AccountInfo, type LifecycleApi } from '../../src/lifecycle/types.js';
import { loadPolicy } from '../../src/policy/load.js';
import type { StrikeEvent } from '../../src/policy/strikes.js';
import { enforcement } from '../harness/enforcement.js';

const policy = loadPolicy('policies');
const outboxes: Outbox[] = [];
afterEach(async () => {
  await Promise.all(outboxes.splice(0).map((o) => o.stop()));
});

/** A lifecycle API that reads the status and then writes it, as the Zimbra adapter does, `delayMs` apart. */
function zimbraLike(delayMs = 0) {
  const account = { status: 'active' as 'active' | 'locked' };
  const api: LifecycleApi = {
    kind: 'stub',
    status: async () => ({ status: account.status }) as never,
    suspend: async () => {
      if (account.status === 'locked') return 'already_locked';
      await new Promise((r) => setTimeout(r, delayMs));
      account.status = 'locked';
      return 'locked';
    },
    reinstate: async () => {
      if (account.status !== 'locked') return;
      await new Promise((r) => setTimeout(r, delayMs));
      account.status = 'active';
    },
  };
  return { api, account };
}

function instance(state: MemoryEnforcementState, lifecycle: LifecycleApi) {
  const made = enforcement({ dir: mkdtempSync(join(tmpdir(), 'douane-race-')), state, lifecycle, policy, deadlineMs: 2000 });
  outboxes.push(made.outbox);
  return made;
}

const strike = (n: number, weight: number): StrikeEvent => ({ account: 'victim@x.test', event: 'bulk', weight, rule: 'bulk.campaign', article: '4.6', reference: `D-00000${n}`, policyVersion: policy.version, evidence: {}, at: Date.now() });

describe('enforcement races', () => {
  it('two strikes at once, one reaching the suspension and one the lock: the lock stays, and reinstating unlocks', async () => {
    // The weaker suspension's write lands last, as a slower instance's would.
    class SlowerSuspensions extends MemoryEnforcementState {
      override async setSuspension(account: string, s: Suspension, opts?: { update?: boolean }) {
        if (s.action === 'suspend_sending') await new Promise((r) => setTimeout(r, 50));
        return super.setSuspension(account, s, opts);
      }
    }
    const state = new SlowerSuspensions();
    const zimbra = zimbraLike();
    const [a, b] = [instance(state, zimbra.api), instance(state, zimbra.api)];
    await a.outbox.start();
    await b.outbox.start();
    await a.enforcer.process(strike(1, 8));
    await a.enforcer.process(strike(2, 8));
    // 24 (suspend sending, step 20) and 32 (lock, step 30) at once.
    await Promise.all([a.enforcer.process(strike(3, 8)), b.enforcer.process(strike(4, 8))]);
    expect(await a.outbox.idle(3000)).toBe(true);
    expect(await b.outbox.idle(3000)).toBe(true);
    expect((await state.account('victim@x.test')).suspension).toMatchObject({ action: 'suspend_account' });
    expect(zimbra.account.status).toBe('locked');
    await a.enforcer.reinstate('victim@x.test', 'cli:lead');
    expect(await a.outbox.idle(3000)).toBe(true);
    expect(zimbra.account.status).toBe('active');
  });

  it('reinstated while a ladder step is being taken: the step is not kept as taken, and the ladder starts over', async () => {
    let reinstateNow: (() => Promise<void>) | undefined;
    class ReinstatedMidStep extends MemoryEnforcementState {
      override async holdClaim(key: string, ttlMs: number) {
        if (key.endsWith(':suspend_account#0') && reinstateNow) {
          const reinstate = reinstateNow;
          reinstateNow = undefined;
          await reinstate();
        }
        return super.holdClaim(key, ttlMs);
      }
    }
    const state = new ReinstatedMidStep();
    const { enforcer } = instance(state, zimbraLike().api);
    reinstateNow = () => enforcer.reinstate('victim@x.test', 'cli:lead');
    for (let n = 1; n <= 3; n++) await enforcer.record(strike(n, 10)); // 30: the lock, lifted (a false positive) as it is taken
    expect((await state.account('victim@x.test')).suspension).toBeUndefined();
    // The account abuses again: it climbs the ladder again, to the lock.
    for (let n = 4; n <= 6; n++) await enforcer.record(strike(n, 10));
    expect((await state.account('victim@x.test')).suspension).toMatchObject({ action: 'suspend_account', reference: 'D-000006' });
  });

  it('a state or an outbox that fails once the suspension is made: it stays in force, audited with its evidence', async () => {
    const { readFileSync } = await import('node:fs');
    let changed = false;
    class FailsAfterTheChange extends MemoryEnforcementState {
      override async setSuspension(account: string, s: Suspension, opts?: { update?: boolean }) {
        const inForce = await super.setSuspension(account, s, opts);
        changed = true;
        return inForce;
      }
      override async strikes(account: string, windowMs: number) {
        if (changed) throw new Error('Command timed out'); // a Redis blip, right after the write
        return super.strikes(account, windowMs);
      }
    }
    const state = new FailsAfterTheChange();
    const dir = mkdtempSync(join(tmpdir(), 'douane-race-'));
    const made = enforcement({ dir, state, lifecycle: zimbraLike().api, policy, deadlineMs: 2000 });
    outboxes.push(made.outbox);
    const enqueue = made.outbox.enqueue.bind(made.outbox);
    made.outbox.enqueue = ((kind: Parameters<typeof enqueue>[0], ...rest: unknown[]) => (kind === 'lifecycle' ? enqueue(kind, ...(rest as [never])) : Promise.reject(new Error('ENOSPC: no space left on device')))) as typeof enqueue;
    await made.enforcer.record(strike(1, 3));
    await made.enforcer.suspend('victim@x.test', 'suspend_sending', { by: 'cli:ops', reference: 'D-000009', reason: 'phishing complaint' });
    expect((await state.account('victim@x.test')).suspension).toMatchObject({ action: 'suspend_sending', reference: 'D-000009' });
    const audited = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(audited.find((e) => e.action === 'suspend_sending')).toMatchObject({ reference: 'D-000009', strikes: [{ reference: 'D-000001', event: 'bulk' }] });
  });

  it('reinstated on one instance while the other is locking: the account ends unlocked', async () => {
    const state = new MemoryEnforcementState();
    const zimbra = zimbraLike(300);
    const [a, b] = [instance(state, zimbra.api), instance(state, zimbra.api)];
    await a.outbox.start();
    await b.outbox.start();
    await a.enforcer.suspend('victim@x.test', 'suspend_account', { by: 'cli:a', reference: 'D-1', reason: 'abuse' });
    // A's lock call has read "active" and is writing "locked" when B reinstates.
    await new Promise((r) => setTimeout(r, 100));
    await b.enforcer.reinstate('victim@x.test', 'cli:b');
    expect(await a.outbox.idle(5000)).toBe(true);
    expect(await b.outbox.idle(5000)).toBe(true);
    expect((await state.account('victim@x.test')).suspension).toBeUndefined();
    expect(zimbra.account.status).toBe('active');
    expect(await state.lockHeld('victim@x.test')).toBe(false);
  });
});

describe('reinstatements racing the ladder and the lifecycle calls', () => {
  it('reinstated between a strike being counted and its step: the step is not taken on strikes the reinstatement erased', async () => {
    let reinstateNow: (() => Promise<void>) | undefined;
    class ReinstatedBeforeTheClaim extends MemoryEnforcementState {
      override async claim(key: string, ttlMs: number) {
        if (key.startsWith('step:') && reinstateNow) {
          const reinstate = reinstateNow;
          reinstateNow = undefined;
          await reinstate();
        }
        return super.claim(key, ttlMs);
      }
    }
    const state = new ReinstatedBeforeTheClaim();
    const { enforcer } = instance(state, zimbraLike().api);
    await enforcer.record(strike(1, 8));
    await enforcer.record(strike(2, 8)); // 16: notified, throttled
    reinstateNow = () => enforcer.reinstate('victim@x.test', 'cli:lead');
    await enforcer.record(strike(3, 8)); // counted as 24, then the reinstatement wipes it all
    expect(await state.account('victim@x.test')).toEqual({});
    // The ladder starts over: the steps were not kept as taken.
    for (let n = 4; n <= 6; n++) await enforcer.record(strike(n, 8));
    expect((await state.account('victim@x.test')).suspension).toMatchObject({ action: 'suspend_sending', reference: 'D-000006' });
  });

  it('a lock that landed after a reinstatement, whose undoing fails once, is undone by a job of its own', async () => {
    const zimbra = zimbraLike(300);
    let failNextUnlock = true;
    const reinstate = zimbra.api.reinstate.bind(zimbra.api);
    zimbra.api.reinstate = async (account, why) => {
      if (zimbra.account.status === 'locked' && failNextUnlock) {
        failNextUnlock = false;
        throw new LifecycleError('timeout', 'ModifyAccountRequest: no answer within 2000 ms', true);
      }
      return reinstate(account, why);
    };
    const state = new MemoryEnforcementState();
    const [a, b] = [instance(state, zimbra.api), instance(state, zimbra.api)];
    await a.outbox.start();
    await b.outbox.start();
    await a.enforcer.suspend('victim@x.test', 'suspend_account', { by: 'cli:a', reference: 'D-1', reason: 'abuse' });
    await new Promise((r) => setTimeout(r, 100)); // A's lock call is under way
    await b.enforcer.reinstate('victim@x.test', 'cli:b'); // B's unlock finds the account still active
    await expect.poll(async () => (await a.outbox.idle(100)) && (await b.outbox.idle(100)) && zimbra.account.status, { timeout: 5000 }).toBe('active');
    expect(failNextUnlock).toBe(false);
    expect((await state.account('victim@x.test')).suspension).toBeUndefined();
    expect(await state.lockHeld('victim@x.test')).toBe(false);
  });

  it('locked again while another instance unlocks: the unlock does not leave the account active while it is suspended', async () => {
    const zimbra = zimbraLike(300);
    const state = new MemoryEnforcementState();
    const [a, b] = [instance(state, zimbra.api), instance(state, zimbra.api)];
    await a.outbox.start();
    await b.outbox.start();
    await a.enforcer.suspend('victim@x.test', 'suspend_account', { by: 'cli:a', reference: 'D-1', reason: 'abuse' });
    expect(await a.outbox.idle(3000)).toBe(true);
    expect(zimbra.account.status).toBe('locked');
    await b.enforcer.reinstate('victim@x.test', 'cli:b'); // B's unlock reads "locked", and writes "active" 300 ms later
    await new Promise((r) => setTimeout(r, 100));
    await a.enforcer.suspend('victim@x.test', 'suspend_account', { by: 'cli:a', reference: 'D-2', reason: 'confirmed phishing' });
    await expect.poll(async () => (await a.outbox.idle(100)) && (await b.outbox.idle(100)) && zimbra.account.status, { timeout: 5000 }).toBe('locked');
    expect((await state.account('victim@x.test')).suspension).toMatchObject({ action: 'suspend_account', reference: 'D-2' });
    // And reinstating it unlocks it.
    await a.enforcer.reinstate('victim@x.test', 'cli:a');
    await expect.poll(async () => (await a.outbox.idle(100)) && (await b.outbox.idle(100)) && zimbra.account.status, { timeout: 5000 }).toBe('active');
  });
});

describe('whose an address is, kept for an outage', () => {
  it('an alias that became an account of its own is not its old account during a later outage', async () => {
    const directory: Record<string, AccountInfo> = {};
    let down = false;
    const api: LifecycleApi = {
      kind: 'stub',
      status: async (a) => {
        if (down) throw new LifecycleError('unavailable', 'down', true);
        return directory[a] ?? ({ status: 'unknown' } as AccountInfo);
      },
      suspend: async () => 'locked' as never,
      reinstate: async () => undefined,
    };
    const state = new MemoryEnforcementState();
    directory['sales@x.test'] = { status: 'active', name: 'old@x.test' } as AccountInfo;
    expect(await instance(state, api).enforcer.canonical('sales@x.test')).toBe('old@x.test');
    await expect.poll(() => state.owner('sales@x.test')).toBe('old@x.test');
    // Another instance learns that it is an account of its own now.
    directory['sales@x.test'] = { status: 'active' } as AccountInfo;
    expect(await instance(state, api).enforcer.canonical('sales@x.test')).toBe('sales@x.test');
    await expect.poll(() => state.owner('sales@x.test')).toBeUndefined();
    down = true;
    expect(await instance(state, api).enforcer.canonical('sales@x.test')).toBe('sales@x.test');
  });
});
