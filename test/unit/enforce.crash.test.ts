// Enforcement across a crash: the process may die between any two of a step's writes. A "crash" here is
// a state write that lands and then never returns (the process stopped right after it); the restart is a
// new state read back from the same file, a new outbox on the same directory and a new enforcer.

import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileEnforcementState, type Suspension, type Throttle } from '../../src/enforce/state.js';
import { LifecycleError, type LifecycleApi } from '../../src/lifecycle/types.js';
import { loadPolicy } from '../../src/policy/load.js';
import type { StrikeEvent } from '../../src/policy/strikes.js';
import { enforcement } from '../harness/enforcement.js';

const never = new Promise<never>(() => undefined);

/** The file state, with writes that can be made to land and then hang, or to fail, once. */
class FaultyState extends FileEnforcementState {
  hangAfter?: 'setSuspension' | 'resetAccount' | 'setThrottle';
  failOnce?: 'setThrottle' | 'resetAccount';
  /** applied only after this promise: a slow Redis */
  slow?: Promise<void>;
  /** resolves when the process "dies": a hang begins, or a write waits on `slow` */
  readonly died: Promise<void>;
  private die!: () => void;

  constructor(file: string, now: () => number) {
    super(file, now);
    this.died = new Promise((r) => (this.die = r));
  }

  private hang(): Promise<never> {
    this.die();
    return never;
  }

  override async setSuspension(account: string, s: Suspension, opts?: { update?: boolean }): Promise<Suspension | undefined> {
    if (this.slow) {
      if (this.slow === never) this.die();
      await this.slow;
    }
    const inForce = await super.setSuspension(account, s, opts);
    if (this.hangAfter === 'setSuspension') return this.hang();
    return inForce;
  }

  override async resetAccount(account: string): Promise<void> {
    if (this.failOnce === 'resetAccount') {
      this.failOnce = undefined;
      throw new Error('Connection is closed.');
    }
    await super.resetAccount(account);
    if (this.hangAfter === 'resetAccount') return this.hang();
  }

  override async setThrottle(account: string, t: Throttle): Promise<void> {
    if (this.failOnce === 'setThrottle') {
      this.failOnce = undefined;
      throw new Error('Connection is closed.');
    }
    if (this.hangAfter === 'setThrottle') return this.hang();
    await super.setThrottle(account, t);
  }
}

function instance(dir: string, now: () => number) {
  const calls: string[] = [];
  const api = { down: false };
  const outage = () => {
    if (api.down) throw new LifecycleError('unavailable', 'Zimbra does not answer', true);
  };
  const lifecycle: LifecycleApi = {
    kind: 'stub',
    status: async () => ({ status: 'active' }) as never,
    suspend: async (a) => {
      outage();
      calls.push(`lock ${a}`);
    },
    reinstate: async (a) => {
      outage();
      calls.push(`unlock ${a}`);
    },
  };
  const state = new FaultyState(join(dir, 'enforcement.json'), now);
  const policy = loadPolicy('policies');
  const { enforcer, outbox } = enforcement({ dir, state, lifecycle, policy, deadlineMs: 500, now });
  const strike = (account: string, event: string, weight: number, n: number): StrikeEvent => ({ account, event, weight, rule: 'r', article: '4.6', reference: `D-00000${n}`, policyVersion: policy.version, evidence: {}, at: now() });
  return { enforcer, state, outbox, calls, strike, api };
}

/** The lifecycle calls the outbox of a restarted instance makes, once it has nothing left to do. */
async function callsAfterRestart(dir: string): Promise<string[]> {
  const restarted = instance(dir, Date.now);
  await restarted.outbox.start();
  expect(await restarted.outbox.idle(2000)).toBe(true);
  await restarted.outbox.stop();
  return restarted.calls;
}

const actions = (dir: string) =>
  readFileSync(join(dir, 'audit.log'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => (JSON.parse(l) as { action: string }).action);

describe('enforcement across a crash', () => {
  it('a lock made in the local state before a crash is carried out in the lifecycle API after the restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-crash-'));
    const first = instance(dir, Date.now);
    first.state.hangAfter = 'setSuspension';
    void first.enforcer.suspend('a@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-AAAAAA', reason: 'malware' });
    await first.state.died;
    expect((await first.state.account('a@x.test')).suspension?.action).toBe('suspend_account');

    expect(await callsAfterRestart(dir)).toEqual(['lock a@x.test']);
  });

  it('an unlock made in the local state before a crash is carried out after the restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-crash-'));
    const first = instance(dir, Date.now);
    await first.outbox.start();
    await first.enforcer.suspend('b@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-BBBBBB', reason: 'malware' });
    expect(await first.outbox.idle(2000)).toBe(true);
    expect(first.calls).toEqual(['lock b@x.test']);
    first.state.hangAfter = 'resetAccount';
    void first.enforcer.reinstate('b@x.test', 'cli:t');
    await first.state.died;
    await first.outbox.stop(); // the process is gone: its outbox runs nothing more
    expect(await first.state.account('b@x.test')).toEqual({});

    expect(await callsAfterRestart(dir)).toEqual(['unlock b@x.test']);
  });

  it('a crash before the local change leaves both sides as they were: the queued lock is superseded', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-crash-'));
    const first = instance(dir, Date.now);
    first.state.slow = never; // the process dies while the state write is still on its way
    void first.enforcer.suspend('c@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-CCCCCC', reason: 'malware' });
    await first.state.died;

    const restarted = instance(dir, Date.now);
    expect(await restarted.state.account('c@x.test')).toEqual({});
    await restarted.outbox.start();
    expect(await restarted.outbox.idle(2000)).toBe(true);
    expect(restarted.calls).toEqual([]);
    expect(actions(dir)).toContain('lifecycle_superseded');
    await restarted.outbox.stop();
  });

  it('a lock waits for a slow state write: the outbox does not run it before the local lock is made', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-crash-'));
    const one = instance(dir, Date.now);
    await one.outbox.start();
    one.state.slow = new Promise((r) => setTimeout(r, 100));
    await one.enforcer.suspend('d@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-DDDDDD', reason: 'malware' });
    expect(await one.outbox.idle(2000)).toBe(true);
    expect(one.calls).toEqual(['lock d@x.test']);
    expect(actions(dir)).not.toContain('lifecycle_superseded');
    await one.outbox.stop();
  });

  it('a lock waiting for the API still stands when a reinstatement fails before its change is made', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-crash-'));
    const one = instance(dir, Date.now);
    await one.outbox.start();
    one.api.down = true;
    await one.enforcer.suspend('g@x.test', 'suspend_account', { by: 'cli:t', reference: 'D-GGGGGG', reason: 'malware' });
    await expect.poll(() => one.outbox.jobs().find((j) => j.kind === 'lifecycle')?.attempts ?? 0).toBeGreaterThan(0);
    one.state.failOnce = 'resetAccount';
    await expect(one.enforcer.reinstate('g@x.test', 'cli:t')).rejects.toThrow(/Connection is closed/);
    expect((await one.state.account('g@x.test')).suspension?.action).toBe('suspend_account');
    one.api.down = false;
    await expect.poll(() => one.calls, { timeout: 3000 }).toEqual(['lock g@x.test']);
    expect(await one.outbox.idle(2000)).toBe(true);
    expect(actions(dir)).not.toContain('lifecycle_superseded');
    await one.outbox.stop();
  });

  it('a ladder step cut short by a crash is taken at the next strike once its claim has run out', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-crash-'));
    let t = Date.parse('2026-11-02T08:00:00Z');
    const one = instance(dir, () => t);
    one.state.hangAfter = 'setThrottle';
    void one.enforcer.record(one.strike('e@x.test', 'malware', 10, 1)); // 10: notify (5), then the throttle (10)
    await one.state.died;
    expect((await one.state.account('e@x.test')).throttle).toBeUndefined();

    t += 10 * 60_000;
    const restarted = instance(dir, () => t);
    await restarted.enforcer.record(restarted.strike('e@x.test', 'spoofing', 1, 2));
    expect((await restarted.state.account('e@x.test')).throttle).toMatchObject({ factor: 0.2 });
  });

  it('a ladder step that failed gives its claim back: the next strike takes it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-crash-'));
    const one = instance(dir, Date.now);
    one.state.failOnce = 'setThrottle';
    await one.enforcer.record(one.strike('f@x.test', 'malware', 10, 1)); // the error is logged, not thrown
    expect((await one.state.account('f@x.test')).throttle).toBeUndefined();
    await one.enforcer.record(one.strike('f@x.test', 'spoofing', 1, 2));
    expect((await one.state.account('f@x.test')).throttle).toMatchObject({ factor: 0.2 });
    expect(actions(dir).filter((a) => a === 'throttle')).toHaveLength(1);
  });
});
