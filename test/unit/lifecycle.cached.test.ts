// The status cache in front of a lifecycle API: reuse for ttlMs, one lookup shared by concurrent callers,
// forgetting on suspend/reinstate (even a lookup already under way), stale answers while the API fails.

import { describe, expect, it } from 'vitest';
import { CachedLifecycle } from '../../src/lifecycle/cached.js';
import { LifecycleError, type AccountInfo, type LifecycleApi } from '../../src/lifecycle/types.js';

/** A lifecycle API whose answers the test decides, one call at a time if it wants. */
class ScriptedApi implements LifecycleApi {
  readonly kind = 'scripted';
  statusCalls: string[] = [];
  suspends: string[] = [];
  reinstates: string[] = [];
  answer: (account: string) => Promise<AccountInfo> = async () => ({ status: 'active' });
  suspendResult: () => Promise<void> = async () => {};

  status(account: string): Promise<AccountInfo> {
    this.statusCalls.push(account);
    return this.answer(account);
  }
  async suspend(account: string): Promise<void> {
    this.suspends.push(account);
    await this.suspendResult();
  }
  async reinstate(account: string): Promise<void> {
    this.reinstates.push(account);
  }
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function setup(opts: { ttlMs?: number; staleMs?: number; maxEntries?: number } = {}) {
  const inner = new ScriptedApi();
  const clock = { t: 1_000_000 };
  const cache = new CachedLifecycle(inner, { ttlMs: opts.ttlMs ?? 60_000, staleMs: opts.staleMs ?? 600_000, maxEntries: opts.maxEntries, now: () => clock.t });
  return { inner, clock, cache };
}

const why = { reference: 'D-1', summary: 'x' };

describe('CachedLifecycle', () => {
  it('answers from the cache within ttlMs and asks again after', async () => {
    const { inner, clock, cache } = setup({ ttlMs: 1000 });
    expect(await cache.status('u@x.test')).toEqual({ status: 'active' });
    clock.t += 999;
    await cache.status('u@x.test');
    expect(inner.statusCalls).toHaveLength(1);
    clock.t += 1;
    await cache.status('u@x.test');
    expect(inner.statusCalls).toHaveLength(2);
    expect(cache.kind).toBe('scripted');
  });

  it('keeps one entry per account, whatever the case of the address', async () => {
    const { inner, cache } = setup();
    inner.answer = async (a) => ({ status: a.toLowerCase().startsWith('l') ? 'locked' : 'active' });
    expect((await cache.status('l@x.test')).status).toBe('locked');
    expect((await cache.status('u@x.test')).status).toBe('active');
    expect((await cache.status('L@X.TEST')).status).toBe('locked');
    expect(inner.statusCalls).toEqual(['l@x.test', 'u@x.test']);
  });

  it('concurrent lookups of one account share a single request', async () => {
    const { inner, cache } = setup();
    const d = deferred<AccountInfo>();
    inner.answer = () => d.promise;
    const all = Promise.all([cache.status('u@x.test'), cache.status('u@x.test'), cache.status('U@x.test')]);
    d.resolve({ status: 'suspended' });
    expect((await all).map((i) => i.status)).toEqual(['suspended', 'suspended', 'suspended']);
    expect(inner.statusCalls).toHaveLength(1);
  });

  it('forgets the account after suspend and reinstate', async () => {
    const { inner, cache } = setup();
    await cache.status('u@x.test');
    await cache.suspend('u@x.test', why);
    inner.answer = async () => ({ status: 'locked' });
    expect((await cache.status('u@x.test')).status).toBe('locked');
    await cache.reinstate('U@x.test', { reference: 'D-1', by: 'ops' });
    inner.answer = async () => ({ status: 'active' });
    expect((await cache.status('u@x.test')).status).toBe('active');
    expect(inner.statusCalls).toHaveLength(3);
    expect([inner.suspends, inner.reinstates]).toEqual([['u@x.test'], ['U@x.test']]);
  });

  it('forgets the account even when suspend fails, and passes the error on', async () => {
    const { inner, cache } = setup();
    await cache.status('u@x.test');
    inner.suspendResult = async () => {
      throw new LifecycleError('timeout', 'slow', true);
    };
    await expect(cache.suspend('u@x.test', why)).rejects.toMatchObject({ kind: 'timeout' });
    await cache.status('u@x.test');
    expect(inner.statusCalls).toHaveLength(2);
  });

  it('does not keep what a lookup started before a suspension found', async () => {
    const { inner, cache } = setup();
    const before = deferred<AccountInfo>();
    inner.answer = () => before.promise;
    const early = cache.status('u@x.test');
    await cache.suspend('u@x.test', why);
    // a caller after the suspension does not join the earlier lookup
    inner.answer = async () => ({ status: 'locked' });
    expect((await cache.status('u@x.test')).status).toBe('locked');
    before.resolve({ status: 'active' });
    expect((await early).status).toBe('active');
    expect((await cache.status('u@x.test')).status).toBe('locked');
    expect(inner.statusCalls).toHaveLength(2);
  });

  it('serves the last answer up to staleMs while the API fails, then passes the error on', async () => {
    const { inner, clock, cache } = setup({ ttlMs: 1000, staleMs: 10_000 });
    inner.answer = async () => ({ status: 'suspended' });
    await cache.status('u@x.test');
    const down = new LifecycleError('unavailable', 'down', true);
    inner.answer = async () => {
      throw down;
    };
    clock.t += 9_999;
    expect((await cache.status('u@x.test')).status).toBe('suspended');
    clock.t += 1;
    await expect(cache.status('u@x.test')).rejects.toBe(down);
    expect(inner.statusCalls).toHaveLength(3);
  });

  it('serves the last answer when a refresh does not come back in time, and keeps the refresh\'s answer once it does', async () => {
    const inner = new ScriptedApi();
    const clock = { t: 1_000_000 };
    const cache = new CachedLifecycle(inner, { ttlMs: 1000, staleMs: 600_000, refreshWaitMs: 50, now: () => clock.t });
    inner.answer = async () => ({ status: 'active', aliases: ['a@x.test'] });
    await cache.status('u@x.test');
    // The API hangs: the answer before is served, not an error after the API's own timeout.
    const hung = deferred<AccountInfo>();
    inner.answer = () => hung.promise;
    clock.t += 5000;
    expect(await cache.status('u@x.test')).toEqual({ status: 'active', aliases: ['a@x.test'] });
    expect(await cache.status('u@x.test')).toEqual({ status: 'active', aliases: ['a@x.test'] });
    // One refresh under way for both, whose answer is kept when it comes.
    expect(inner.statusCalls).toHaveLength(2);
    hung.resolve({ status: 'locked' });
    await hung.promise;
    await new Promise((r) => setImmediate(r));
    expect(await cache.status('u@x.test')).toEqual({ status: 'locked' });
    // Reinstated while a slow refresh is waited for: the answer from before is not served, a new one is.
    clock.t += 5000;
    const slow = deferred<AccountInfo>();
    inner.answer = () => slow.promise;
    const during = cache.status('u@x.test');
    await new Promise((r) => setTimeout(r, 10));
    inner.answer = async () => ({ status: 'active' });
    await cache.reinstate('u@x.test', { reference: 'D-1', by: 'cli:test' });
    expect(await during).toEqual({ status: 'active' });
    slow.resolve({ status: 'locked' });
    // Nor the refresh's own answer when it comes back after the reinstatement, within the wait.
    clock.t += 5000;
    const quick = deferred<AccountInfo>();
    inner.answer = () => quick.promise;
    const racing = cache.status('u@x.test');
    await new Promise((r) => setTimeout(r, 10));
    inner.answer = async () => ({ status: 'active', aliases: ['after@x.test'] });
    await cache.reinstate('u@x.test', { reference: 'D-1', by: 'cli:test' });
    quick.resolve({ status: 'locked' });
    expect(await racing).toEqual({ status: 'active', aliases: ['after@x.test'] });
    // With nothing to serve, the first lookup is waited for.
    const first = deferred<AccountInfo>();
    inner.answer = () => first.promise;
    const waiting = cache.status('new@x.test');
    setTimeout(() => first.resolve({ status: 'active' }), 100);
    expect(await waiting).toEqual({ status: 'active' });
  });

  it('with nothing cached, a failure is passed on and not remembered', async () => {
    const { inner, cache } = setup();
    const down = new LifecycleError('unavailable', 'down', true);
    inner.answer = async () => {
      throw down;
    };
    await expect(cache.status('u@x.test')).rejects.toBe(down);
    inner.answer = async () => ({ status: 'active' });
    expect((await cache.status('u@x.test')).status).toBe('active');
    expect(inner.statusCalls).toHaveLength(2);
  });

  it('does not serve a stale answer once the account was suspended', async () => {
    const { inner, clock, cache } = setup({ ttlMs: 1000, staleMs: 10_000 });
    await cache.status('u@x.test');
    await cache.suspend('u@x.test', why);
    inner.answer = async () => {
      throw new LifecycleError('unavailable', 'down', true);
    };
    clock.t += 2000;
    await expect(cache.status('u@x.test')).rejects.toMatchObject({ kind: 'unavailable' });
  });

  it('forgets the least recently read account beyond maxEntries', async () => {
    const { inner, cache } = setup({ maxEntries: 2 });
    await cache.status('a@x.test');
    await cache.status('b@x.test');
    await cache.status('a@x.test'); // a is now the most recently read
    await cache.status('c@x.test'); // b goes
    await cache.status('a@x.test');
    await cache.status('b@x.test');
    expect(inner.statusCalls).toEqual(['a@x.test', 'b@x.test', 'c@x.test', 'b@x.test']);
  });
});
