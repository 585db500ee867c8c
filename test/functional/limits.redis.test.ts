// The limiter on a real Redis, through the client the gateway makes (auto-pipelined): its first counts,
// sent while other commands already wait in the same pipeline, as on a gateway's first busy seconds.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisEnforcementState } from '../../src/enforce/state.js';
import { Limiter } from '../../src/limits/limiter.js';
import { createRedis, type RedisClient } from '../../src/limits/redis.js';
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
