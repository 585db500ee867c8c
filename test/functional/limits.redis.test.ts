// The limiter on a real Redis, through the client the gateway makes (auto-pipelined): its first counts,
// sent while other commands already wait in the same pipeline, as on a gateway's first busy seconds.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisEnforcementState } from '../../src/enforce/state.js';
import { LateCounts } from '../../src/limits/late-counts.js';
import { Limiter } from '../../src/limits/limiter.js';
import { createRedis, type RedisClient } from '../../src/limits/redis.js';
import { RedisStructures } from '../../src/limits/structures.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { loadPolicy } from '../../src/policy/load.js';
import { startRedis, type RedisInstance } from '../harness/redis.js';

const limits = loadPolicy('fixtures/policies/small-limits').account('roomy@example.test').limits;
const log = createLogger({ level: 'silent' });
let redis: RedisInstance;
let client: RedisClient;

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  client?.disconnect();
  await redis.stop();
});

/** A client of its own, as the gateway makes it, once connected. */
async function connected(): Promise<RedisClient> {
  const own = createRedis({ url: redis.url, key_prefix: 'douane' }, 2000, log, new Metrics({ version: 't', defaultMetrics: false }));
  await new Promise<void>((resolve) => own.once('ready', () => resolve()));
  return own;
}

describe('limits on Redis', () => {
  it('counts the first messages while other commands already wait in the pipeline, and the process goes on', async () => {
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    client = createRedis({ url: redis.url, key_prefix: 'douane' }, 2000, log, metrics);
    await new Promise<void>((resolve) => client.once('ready', () => resolve()));
    const limiter = new Limiter({ redis: client, keyPrefix: 'douane', onFailure: 'tempfail', deadlineMs: 2000, metrics, log });
    // rate-limiter-flexible defines its script on the client when its first counter is made: here, in
    // the same tick as a command that opened an auto-pipeline. ioredis then threw where nothing could catch
    // it ("results[i] is not iterable"), and the gateway exited.
    const faults: unknown[] = [];
    const onFault = (err: unknown) => faults.push(err);
    process.on('uncaughtException', onFault);
    try {
      const waiting = client.get('douane:unrelated');
      const counts = await Promise.all([limiter.countMessage('a@example.test', limits, 1000), limiter.countMessage('b@example.test', limits, 1000), waiting]);
      await new Promise((r) => setTimeout(r, 50));
      expect(faults).toEqual([]);
      expect(counts[0].judge(limits).facts).toMatchObject({ exceeded: [], degraded: false, usage: { messages_per_hour: 1 } });
      expect(counts[1].judge(limits).facts).toMatchObject({ exceeded: [], degraded: false, usage: { messages_per_hour: 1 } });
      expect((await limiter.countMessage('a@example.test', limits, 1000)).judge(limits).facts.usage.messages_per_hour).toBe(2);
    } finally {
      process.off('uncaughtException', onFault);
    }
  });

  it('a master demoted to replica: not ready, each refused write reconnects, and counts resume once it is a master again', async () => {
    const { redisPing } = await import('../../src/limits/redis.js');
    const { DEAD_PORT } = await import('../harness/net.js');
    const demoted = await startRedis();
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    const own = createRedis({ url: demoted.url, key_prefix: 'douane' }, 2000, log, metrics);
    await new Promise<void>((resolve) => own.once('ready', () => resolve()));
    try {
      const limiter = new Limiter({ redis: own, keyPrefix: 'douane', onFailure: 'tempfail', deadlineMs: 2000, metrics, log });
      expect((await limiter.countMessage('a@example.test', limits, 1000)).judge(limits).facts.degraded).toBe(false);
      expect(await redisPing(own)).toEqual({ ok: true });
      demoted.cli('replicaof', '127.0.0.1', String(DEAD_PORT));
      expect(await redisPing(own)).toEqual({ ok: false, detail: expect.stringMatching(/^Redis is a slave \(read-only\)/) });
      let reconnects = 0;
      own.on('reconnecting', () => reconnects++);
      expect((await limiter.countMessage('a@example.test', limits, 1000)).judge(limits).unavailable).toBe(true);
      await expect.poll(() => reconnects).toBeGreaterThan(0);
      demoted.cli('replicaof', 'no', 'one');
      await expect.poll(async () => (await limiter.countMessage('a@example.test', limits, 1000)).judge(limits).facts.usage.messages_per_hour, { timeout: 10_000 }).toBeGreaterThan(1);
      expect(await redisPing(own)).toEqual({ ok: true });
    } finally {
      own.disconnect();
      await demoted.stop();
    }
  });

  it('a suspension is set in one step on Redis: a lock is not replaced by a weaker one, and an update does not bring back a reinstated one', async () => {
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    const own = createRedis({ url: redis.url, key_prefix: 'douane' }, 2000, log, metrics);
    await new Promise<void>((resolve) => own.once('ready', () => resolve()));
    try {
      const state = new RedisEnforcementState(own, 'douane-race');
      const lock = { since: 1, action: 'suspend_account' as const, reason: 'r', reference: 'D-LOCK01', by: 'douane' };
      const sending = { since: 2, until: Date.now() + 60_000, action: 'suspend_sending' as const, reason: 'r', reference: 'D-SEND01', by: 'douane' };
      expect(await state.setSuspension('a@x.test', lock)).toEqual(lock);
      expect(await state.setSuspension('a@x.test', sending)).toEqual(lock);
      expect((await state.account('a@x.test')).suspension).toEqual(lock);
      // An update of another suspension changes nothing; of the same one, it is made.
      expect(await state.setSuspension('a@x.test', { ...lock, reference: 'D-OTHER1', lockedBy: 'douane' }, { update: true })).toEqual(lock);
      expect(await state.setSuspension('a@x.test', { ...lock, lockedBy: 'douane' }, { update: true })).toEqual({ ...lock, lockedBy: 'douane' });
      await state.resetAccount('a@x.test');
      expect(await state.setSuspension('a@x.test', { ...lock, lockedBy: 'douane' }, { update: true })).toBeUndefined();
      expect((await state.account('a@x.test')).suspension).toBeUndefined();
      // A stored one Redis's own JSON decoder would refuse (a lone surrogate, as JSON.stringify writes it)
      // does not stop the next change; nor does a reason that spells out another suspension's members.
      const odd = { ...sending, reason: 'complaint \ud83d "action":"suspend_account"', reference: 'D-ODD001' };
      expect(await state.setSuspension('c@x.test', odd)).toEqual(odd);
      expect(await state.setSuspension('c@x.test', lock)).toEqual(lock);
      expect(await state.setSuspension('d@x.test', odd)).toEqual(odd);
      expect(await state.setSuspension('d@x.test', { ...sending, reference: 'D-SEND02' })).toEqual({ ...sending, reference: 'D-SEND02' });
      // A timed one keeps its time to live; a lock replaces it.
      expect(await state.setSuspension('b@x.test', sending)).toEqual(sending);
      expect(Number(await own.pttl('douane-race:suspended:{b@x.test}'))).toBeGreaterThan(50_000);
      expect(await state.setSuspension('b@x.test', lock)).toEqual(lock);
      expect(Number(await own.pttl('douane-race:suspended:{b@x.test}'))).toBe(-1);
    } finally {
      own.disconnect();
    }
  });
});

describe('counts Redis makes after Douane stopped waiting for them', () => {
  it('are taken back whichever comes first, the mark or the cancel, and once', async () => {
    const own = await connected();
    try {
      const late = new LateCounts(own, log);
      // Counted, then marked, then cancelled: taken back.
      await own.set('late:a', 0, 'EX', 60, 'NX');
      await own.incrby('late:a', 3);
      late.mark('late:m1', [{ key: 'late:a', points: 3 }]);
      late.cancel({ marker: 'late:m1', keys: ['late:a'] });
      await expect.poll(() => late.waiting).toBe(0);
      expect(await own.get('late:a')).toBe('0');
      // Cancelled twice (a refund and a retry): taken back once.
      await own.incrby('late:a', 2);
      late.cancel({ marker: 'late:m1', keys: ['late:a'] });
      await expect.poll(() => late.waiting).toBe(0);
      expect(await own.get('late:a')).toBe('2');
      // The cancel first (Redis ran the counts after the cancel reached it): the mark takes them back when it runs.
      late.cancel({ marker: 'late:m2', keys: ['late:b'] });
      await expect.poll(() => late.waiting).toBe(0);
      await own.set('late:b', 0, 'EX', 60, 'NX');
      await own.incrby('late:b', 1);
      late.mark('late:m2', [{ key: 'late:b', points: 1 }]);
      await expect.poll(() => own.get('late:b')).toBe('0');
      // Only the keys named are taken back: a count Redis answered was given back the usual way.
      await own.set('late:c', 0, 'EX', 60, 'NX');
      await own.set('late:d', 0, 'EX', 60, 'NX');
      await Promise.all([own.incrby('late:c', 1), own.incrby('late:d', 1)]);
      late.mark('late:m3', [{ key: 'late:c', points: 1 }, { key: 'late:d', points: 1 }]);
      late.cancel({ marker: 'late:m3', keys: ['late:d'] });
      await expect.poll(() => late.waiting).toBe(0);
      expect([await own.get('late:c'), await own.get('late:d')]).toEqual(['1', '0']);
      // Marks expire: nothing is left behind for long.
      expect(Number(await own.pttl('late:m3'))).toBeGreaterThan(0);
      late.close();
    } finally {
      own.disconnect();
    }
  });

  it('a phase Redis answered leaves its mark a minute at most; one Redis refused (out of memory) waits for no cancel', async () => {
    const own = await connected();
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    try {
      const limiter = new Limiter({ redis: own, keyPrefix: 'marks', onFailure: 'insurance', deadlineMs: 2000, metrics, log });
      const counted = await limiter.countMessage('joe@example.test', limits, 10, { history: 24, minMessages: 1000 });
      await limiter.checkRecipient('joe@example.test', limits, 'r@example.net', 0);
      expect(counted.grant.late).toBeUndefined();
      const marks = redis.cli('--scan', '--pattern', 'marks:late:*').split('\n').filter(Boolean);
      expect(marks).toHaveLength(2); // one per phase, sent with the phase's own script
      for (const m of marks) expect(Number(redis.cli('pttl', m))).toBeGreaterThan(50_000);
      for (const m of marks) expect(Number(redis.cli('pttl', m))).toBeLessThanOrEqual(60_000);
      // Refused outright: it did not run, and will not; nothing to take back later.
      redis.cli('config', 'set', 'maxmemory-policy', 'noeviction');
      redis.cli('config', 'set', 'maxmemory', '1');
      try {
        for (let i = 0; i < 5; i++) {
          const refused = await limiter.countMessage(`u${i}@example.test`, limits, 10);
          expect(refused.judge(limits).facts.degraded).toBe(true);
          expect(refused.grant.late).toBeUndefined();
          await limiter.refund(refused.grant);
        }
        expect((limiter as unknown as { late: LateCounts }).late.waiting).toBe(0);
      } finally {
        redis.cli('config', 'set', 'maxmemory', '0');
      }
    } finally {
      own.disconnect();
    }
  });

  it('are taken back only within the window they were made in, never from the next one', async () => {
    const own = await connected();
    try {
      const late = new LateCounts(own, log);
      await own.set('late:w', 4, 'PX', 300);
      late.mark('late:mw', [{ key: 'late:w', points: 1 }]);
      await new Promise((r) => setTimeout(r, 400));
      // The window rolled over; the next one has its own count.
      await own.set('late:w', 1, 'EX', 60);
      late.cancel({ marker: 'late:mw', keys: ['late:w'] });
      await expect.poll(() => late.waiting).toBe(0);
      expect(await own.get('late:w')).toBe('1');
      late.close();
    } finally {
      own.disconnect();
    }
  });

  it('a recipient domain: the use that call added is taken back, and none when the set was full', async () => {
    const own = await connected();
    try {
      const late = new LateCounts(own, log);
      const sets = new RedisStructures(own);
      expect(await sets.setAdd('late:{acct}:domains', 'a.test', 2, 60_000)).toMatchObject({ added: true, count: 1 });
      expect(await sets.setAdd('late:{acct}:domains', 'a.test', 2, 60_000, { marker: 'late:{acct}:m1', counted: [] })).toMatchObject({ added: true, count: 1 });
      late.cancel({ marker: 'late:{acct}:m1', keys: ['late:{acct}:domains'] });
      await expect.poll(() => late.waiting).toBe(0);
      // The other transaction's use stays.
      expect(await own.hgetall('late:{acct}:domains')).toEqual({ 'a.test': '1' });
      expect(await sets.setAdd('late:{acct}:domains', 'b.test', 2, 60_000)).toMatchObject({ added: true, count: 2 });
      expect(await sets.setAdd('late:{acct}:domains', 'c.test', 2, 60_000, { marker: 'late:{acct}:m2', counted: [] })).toMatchObject({ added: false, exceeded: true });
      late.cancel({ marker: 'late:{acct}:m2', keys: ['late:{acct}:domains'] });
      await expect.poll(() => late.waiting).toBe(0);
      expect(await own.hgetall('late:{acct}:domains')).toEqual({ 'a.test': '1', 'b.test': '1' });
      // With the phase's counts before it, recorded by the same script: taken back with the use.
      await own.set('late:{acct}:hour', 0, 'EX', 60, 'NX');
      await own.incrby('late:{acct}:hour', 1);
      expect(await sets.setAdd('late:{acct}:domains', 'b.test', 2, 60_000, { marker: 'late:{acct}:m4', counted: [{ key: 'late:{acct}:hour', points: 1 }] })).toMatchObject({ added: true });
      expect(await sets.hours('late:{acct}:hourly', [1, 2], { marker: 'late:{acct}:m5', counted: [{ key: 'late:{acct}:hour', points: 1 }] })).toEqual([0, 0]);
      late.cancel({ marker: 'late:{acct}:m4', keys: ['late:{acct}:domains', 'late:{acct}:hour'] });
      await expect.poll(() => late.waiting).toBe(0);
      expect(await own.hgetall('late:{acct}:domains')).toEqual({ 'a.test': '1', 'b.test': '1' });
      expect(await own.get('late:{acct}:hour')).toBe('0');
      // A use given back after its hour's set was made again (a new hour) is not taken from it.
      await own.hset('late:{acct}:next', 'a.test', '1');
      await own.pexpire('late:{acct}:next', 3_600_000);
      await sets.setRemove('late:{acct}:next', 'a.test', 500);
      expect(await own.hgetall('late:{acct}:next')).toEqual({ 'a.test': '1' });
      await sets.setRemove('late:{acct}:next', 'a.test', 3_601_000);
      expect(await own.hgetall('late:{acct}:next')).toEqual({});
      // A member whose name has the separator in it.
      expect(await sets.setAdd('late:{acct}:odd', 'x|1|2', 2, 60_000, { marker: 'late:{acct}:m3', counted: [] })).toMatchObject({ added: true });
      late.cancel({ marker: 'late:{acct}:m3', keys: ['late:{acct}:odd'] });
      await expect.poll(() => late.waiting).toBe(0);
      expect(await own.hgetall('late:{acct}:odd')).toEqual({});
      late.close();
    } finally {
      own.disconnect();
    }
  });
});

describe('counts given back', () => {
  it('a give-back that reaches Redis after the window ended is not credited to the next window', async () => {
    const own = await connected();
    let shift = 0;
    try {
      const limiter = new Limiter({ redis: own, keyPrefix: 'edge', onFailure: 'tempfail', deadlineMs: 2000, metrics: new Metrics({ version: 't', defaultMetrics: false }), log, now: () => Date.now() + shift });
      const key = 'edge:messages_per_minute:{joe@example.test}';
      const counted = await limiter.countMessage('joe@example.test', limits, 1000);
      // Half a second before the minute ends, by the gateway's clock and by Redis's, the message is refused
      // and its count given back; Redis stalls for 400 ms, and runs the give-back after the minute ended.
      shift = counted.grant.consumed[0]!.windowEndsAt - Date.now() - 500;
      redis.cli('pexpire', key, '300');
      redis.pause();
      let refunding;
      try {
        refunding = limiter.refund(counted.grant);
        await new Promise((r) => setTimeout(r, 400));
      } finally {
        redis.resume();
      }
      await refunding;
      expect(redis.cli('get', key)).toBe('');
      shift = 0;
      expect((await limiter.countMessage('joe@example.test', limits, 1000)).judge(limits).facts.usage.messages_per_minute).toBe(1);
      // Within the window, a give-back is made: the day's bytes reserved, settled down to the real size.
      const next = await limiter.countMessage('joe@example.test', limits, 5000);
      await limiter.accepted('joe@example.test', limits, 100, 24, next.grant);
      expect(redis.cli('get', 'edge:bytes_per_day:{joe@example.test}')).toBe(String(1000 + 1000 + 100));
      await limiter.refund((await limiter.countMessage('joe@example.test', limits, 1)).grant);
      expect(redis.cli('get', key)).toBe('2');
    } finally {
      own.disconnect();
    }
  });
});

describe('what the insurance counted is given back to it', () => {
  it('a recipient domain the insurance counted is given back to the insurance, not taken off a use Redis holds for an accepted message', async () => {
    const own = await connected();
    const roomy = { ...limits, recipient_domains_per_hour: 2 };
    try {
      const limiter = new Limiter({ redis: own, keyPrefix: 'dom', onFailure: 'insurance', deadlineMs: 2000, metrics: new Metrics({ version: 't', defaultMetrics: false }), log });
      expect((await limiter.checkRecipient('joe@example.test', roomy, 'x@a.test', 0)).facts.degraded).toBe(false); // accepted: its use stands
      // Redis refuses writes for a moment: the next recipient's domain is counted by the insurance.
      redis.cli('config', 'set', 'maxmemory-policy', 'noeviction');
      redis.cli('config', 'set', 'maxmemory', '1');
      let refused;
      try {
        refused = await limiter.checkRecipient('joe@example.test', roomy, 'y@a.test', 0);
      } finally {
        redis.cli('config', 'set', 'maxmemory', '0');
      }
      expect(refused.facts.degraded).toBe(true);
      await limiter.refund(refused.grant);
      expect(await own.hgetall('dom:domain-uses:{joe@example.test}')).toEqual({ 'a.test': '1' });
      expect((await limiter.checkRecipient('joe@example.test', roomy, 'z@b.test', 0)).facts.exceeded).toEqual([]);
      expect((await limiter.checkRecipient('joe@example.test', roomy, 'z@c.test', 0)).facts.exceeded).toEqual(['recipient_domains_per_hour']);
    } finally {
      own.disconnect();
    }
  });
});

describe('failed logins on Redis', () => {
  it('a login that works at the limit starts no block: a guesser\'s failures still end with their window', async () => {
    const own = await connected();
    try {
      const limiter = new Limiter({ redis: own, keyPrefix: 'auth-window', onFailure: 'tempfail', deadlineMs: 2000, metrics: new Metrics({ version: 't', defaultMetrics: false }), log });
      const auth = { failures_per_ip: { limit: 100, window: 60_000, block: 0 }, failures_per_account: { limit: 3, window: 1000, block: 60_000 } };
      for (let i = 0; i < 3; i++) await (await limiter.authAttempt('198.51.100.9', 'v@x.test', auth)).settle('failed');
      const holder = await limiter.authAttempt('203.0.113.5', 'v@x.test', auth);
      expect(holder.blocked).toBeUndefined();
      await holder.settle('succeeded');
      // The window's failures expire with it, not a block later.
      expect(Number(redis.cli('pttl', 'auth-window:auth_account:{v@x.test}'))).toBeLessThanOrEqual(1000);
      await new Promise((r) => setTimeout(r, 1200));
      await (await limiter.authAttempt('198.51.100.9', 'v@x.test', auth)).settle('failed');
      const again = await limiter.authAttempt('203.0.113.5', 'v@x.test', auth);
      expect(again.blocked).toBeUndefined();
      await again.settle('succeeded');
      // Past the limit by failures, blocked for the block, and the failure that did it says so once.
      const attempts = [];
      for (let i = 0; i < 3; i++) attempts.push(await (await limiter.authAttempt('198.51.100.9', 'v@x.test', auth)).settle('failed'));
      expect(attempts.map((a) => a.accountBlockedNow)).toEqual([false, false, true]);
      const refused = await limiter.authAttempt('203.0.113.5', 'v@x.test', auth);
      expect(refused).toMatchObject({ blocked: 'account' });
      expect(refused.retryAfter).toBeGreaterThan(50);
    } finally {
      own.disconnect();
    }
  });
});

describe('concurrent sessions across outages', () => {
  it('a session the insurance opened in one outage and that ended once Redis was back takes no place in the next', async () => {
    const own = await startRedis();
    const c = createRedis({ url: own.url, key_prefix: 'douane' }, 300, log, new Metrics({ version: 't', defaultMetrics: false }));
    await new Promise<void>((resolve) => c.once('ready', () => resolve()));
    const one = { ...limits, concurrent_sessions: 1 };
    try {
      const l = new Limiter({ redis: c, keyPrefix: 'douane', onFailure: 'insurance', deadlineMs: 300, metrics: new Metrics({ version: 't', defaultMetrics: false }), log });
      const expiresAt = Date.now() + 1_860_000;
      await own.crash();
      await l.sessionOpened('a@x.test', 'A', expiresAt);
      expect((await l.countMessage('a@x.test', one, 100, undefined, { id: 'A', expiresAt })).judge(one).facts).toMatchObject({ degraded: true, exceeded: [] });
      await own.revive();
      await new Promise<void>((resolve) => (c.status === 'ready' ? resolve() : c.once('ready', () => resolve())));
      await l.sessionClosed('a@x.test', 'A');
      await own.crash();
      await l.sessionOpened('a@x.test', 'B', expiresAt);
      expect((await l.countMessage('a@x.test', one, 100, undefined, { id: 'B', expiresAt })).judge(one).facts).toMatchObject({ degraded: true, exceeded: [], usage: { concurrent_sessions: 1 } });
    } finally {
      c.disconnect();
      await own.stop();
    }
  });
});
