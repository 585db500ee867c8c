// The bulk counter on a real Redis (and a real 3-node Redis Cluster): it counts as the exact in-memory
// counter does, first sightings and shared bands alike, and a content seen once costs one small key per
// band rather than three HyperLogLogs.

import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BulkCounter } from '../../src/bulk/counter.js';
import type { BulkFingerprint } from '../../src/bulk/fingerprint.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import type { BulkFacts } from '../../src/policy/facts.js';
import { startRedis, startRedisCluster, type RedisCluster, type RedisInstance } from '../harness/redis.js';

const WINDOW = 3_600_000;
let redis: RedisInstance;
let client: Redis;

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
});
afterAll(async () => {
  client?.disconnect();
  await redis?.stop();
});
beforeEach(() => {
  redis.cli('flushall');
});

function counter(on?: Redis | Cluster, onFailure?: 'insurance' | 'tempfail'): BulkCounter {
  return new BulkCounter({ redis: on, keyPrefix: 'douane', deadlineMs: 5000, metrics: new Metrics({ version: 't', defaultMetrics: false }), log: createLogger({ level: 'silent' }), onFailure });
}

/** A deterministic sequence of messages: contents of their own and bands shared, 1 to 20 recipients. */
function traffic(count: number): { fp: BulkFingerprint; account: string; recipients: string[] }[] {
  let seed = 42;
  // mulberry32: the same sequence on every run
  const next = (n: number) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) % n;
  };
  return Array.from({ length: count }, (_, i) => {
    // One message in three has a content of its own; the others share bands from a pool of 40.
    const own = next(3) === 0;
    const bands = [...new Set(Array.from({ length: 6 }, () => (own ? 1000 + i * 6 + next(6) : next(40))))].map((b) => `t${b % 6}:${b.toString(16).padStart(16, '0')}`);
    const first = next(24);
    const recipients = next(10) === 0 ? Array.from({ length: 17 + next(4) }, (_, k) => `r${(first + k) % 24}@example.net`) : Array.from({ length: 1 + next(5) }, () => `r${next(24)}@example.net`);
    return { fp: { id: `m${i}`, bands, basis: 'text' } as BulkFingerprint, account: `user${next(4)}@example.test`, recipients };
  });
}

async function replay(c: BulkCounter, messages: ReturnType<typeof traffic>): Promise<(BulkFacts | undefined)[]> {
  const out = [];
  for (const m of messages) out.push(await c.count(m.fp, m.account, m.recipients, WINDOW));
  return out;
}

function uniqueMessage(i: number): BulkFingerprint {
  return { id: `u${i}`, bands: Array.from({ length: 48 }, (_, b) => `t${b}:${(i * 48 + b).toString(16).padStart(16, '0')}`), basis: 'text' } as BulkFingerprint;
}

describe('bulk counter when Redis fails', () => {
  it('tempfails with limits.on_redis_failure: tempfail; with insurance, counts here and says so', async () => {
    const { BulkCountsUnavailable } = await import('../../src/bulk/counter.js');
    const { DEAD_PORT } = await import('../harness/net.js');
    const dead = new Redis({ port: DEAD_PORT, host: '127.0.0.1', lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    dead.on('error', () => undefined);
    try {
      const fp = uniqueMessage(1);
      await expect(counter(dead, 'tempfail').count(fp, 'a@example.test', ['r@example.net'], WINDOW)).rejects.toBeInstanceOf(BulkCountsUnavailable);
      expect(await counter(dead, 'insurance').count(fp, 'a@example.test', ['r@example.net'], WINDOW)).toMatchObject({ accountRecipients: 1, degraded: true });
      expect(await counter(client).count(fp, 'a@example.test', ['r@example.net'], WINDOW)).not.toHaveProperty('degraded');
      // Once Redis answers again, the insurance's own counts are dropped: Redis keeps the window.
      let down = true;
      const flapping = counter(
        new Proxy(client, { get: (target, key, receiver) => (key === 'douaneBulkAdd' && down ? () => Promise.reject(new Error('Connection is closed.')) : Reflect.get(target, key, receiver)) }),
        'insurance',
      );
      expect(await flapping.count(uniqueMessage(2), 'a@example.test', ['r@example.net'], WINDOW)).toMatchObject({ degraded: true });
      expect(flapping.bandsKept).toBe(48);
      down = false;
      expect(await flapping.count(uniqueMessage(3), 'a@example.test', ['r@example.net'], WINDOW)).not.toHaveProperty('degraded');
      expect(flapping.bandsKept).toBe(0);
    } finally {
      dead.disconnect();
    }
  });
});

describe('bulk counter on Redis', () => {
  it('counts as the exact in-memory counter does: first sightings, shared bands, several accounts, more recipients than a first sighting keeps', async () => {
    const messages = traffic(300);
    const expected = await replay(counter(), messages);
    // The sequence does exercise every path: bands seen once, bands shared, messages past 16 recipients.
    expect(expected.filter((f) => f!.globalAccounts === 1 && f!.globalRecipients === f!.accountRecipients).length).toBeGreaterThan(10);
    expect(expected.filter((f) => f!.globalAccounts === 4).length).toBeGreaterThan(50);
    expect(messages.filter((m) => new Set(m.recipients).size > 16).length).toBeGreaterThan(10);
    expect(await replay(counter(client), messages)).toEqual(expected);
  });

  it('keeps a content seen once as one small key per band, and makes its counters when another message shares it', async () => {
    const c = counter(client);
    const before = Number(/used_memory:(\d+)/.exec(redis.cli('info', 'memory'))![1]);
    for (let i = 0; i < 300; i++) {
      expect(await c.count(uniqueMessage(i), 'alice@example.test', ['bob@example.net'], WINDOW)).toMatchObject({ accountRecipients: 1, globalRecipients: 1, globalAccounts: 1 });
    }
    const perMessage = (Number(/used_memory:(\d+)/.exec(redis.cli('info', 'memory'))![1]) - before) / 300;
    expect(Number(redis.cli('dbsize'))).toBe(300 * 48);
    // Three HyperLogLogs per band took about 34 KB per message.
    expect(perMessage).toBeLessThan(12_000);
    const band = 'douane:bulk:{douane-bulk}:t0:0000000000000000';
    expect(redis.cli('get', band)).toBe('alice@example.test\nbob@example.net');

    // The same content from another account, to another recipient and one already counted.
    expect(await c.count(uniqueMessage(0), 'carol@example.test', ['dave@example.net', 'BOB@example.net'], WINDOW)).toMatchObject({ accountRecipients: 2, globalRecipients: 2, globalAccounts: 2 });
    expect(Number(redis.cli('dbsize'))).toBe(300 * 48 + 48 * 4);
    expect(redis.cli('get', band)).toBe('*');
    expect(redis.cli('pfcount', `${band}:a:alice@example.test`)).toBe('1');
    expect(redis.cli('pfcount', `${band}:a:carol@example.test`)).toBe('2');
    // The band's key outlives its counters: when it is gone, none of them is left.
    const ttl = (key: string) => Number(redis.cli('pttl', key));
    expect(ttl(band)).toBeGreaterThanOrEqual(Math.max(ttl(`${band}:g`), ttl(`${band}:n`), ttl(`${band}:a:alice@example.test`)));
    expect(ttl(`${band}:g`)).toBeGreaterThan(0);
  });

  it('ends all the counters of a band a window after its first sighting, as in memory: those made later get what is left', async () => {
    const c = counter(client);
    await c.count(uniqueMessage(2), 'alice@example.test', ['bob@example.net'], WINDOW);
    await new Promise((r) => setTimeout(r, 300));
    await c.count(uniqueMessage(2), 'carol@example.test', ['dave@example.net'], WINDOW);
    const band = 'douane:bulk:{douane-bulk}:t0:0000000000000060';
    const ttl = (key: string) => Number(redis.cli('pttl', key));
    // Made now, but counting since the first sighting: they end when it would have, as the band's counts
    // do in memory, this message's own counter too; the band's key outlives them all.
    for (const key of [`${band}:g`, `${band}:n`, `${band}:a:alice@example.test`, `${band}:a:carol@example.test`]) expect(ttl(key), key).toBeLessThanOrEqual(WINDOW - 250);
    expect(ttl(band)).toBeGreaterThan(WINDOW - 250);
    // A third account later still: the same end.
    await c.count(uniqueMessage(2), 'erin@example.test', ['frank@example.net'], WINDOW);
    const endsAt = (key: string) => Number(redis.cli('pexpiretime', key));
    // The same end, to the millisecond Redis's clock may move between the script's PTTL and its PEXPIRE.
    expect(Math.abs(endsAt(`${band}:a:erin@example.test`) - endsAt(`${band}:g`))).toBeLessThanOrEqual(1);
  });

  it('goes on with counters an earlier version made without the band key', async () => {
    const band = 'douane:bulk:{douane-bulk}:t0:0000000000000090';
    redis.cli('pfadd', `${band}:g`, 'r1@example.net', 'r2@example.net', 'r3@example.net');
    redis.cli('pfadd', `${band}:n`, 'alice@example.test', 'bob@example.test');
    redis.cli('pfadd', `${band}:a:alice@example.test`, 'r1@example.net', 'r2@example.net');
    for (const key of [`${band}:g`, `${band}:n`, `${band}:a:alice@example.test`]) redis.cli('pexpire', key, String(WINDOW));
    expect(await counter(client).count(uniqueMessage(3), 'alice@example.test', ['r4@example.net'], WINDOW)).toMatchObject({ accountRecipients: 3, globalRecipients: 4, globalAccounts: 2 });
  });

  it('counts a message to more recipients than a first sighting keeps at once, with its counters', async () => {
    const c = counter(client);
    const rcpts = Array.from({ length: 17 }, (_, i) => `r${i}@example.net`);
    expect(await c.count(uniqueMessage(1), 'alice@example.test', rcpts, WINDOW)).toMatchObject({ accountRecipients: 17, globalRecipients: 17, globalAccounts: 1 });
    expect(Number(redis.cli('dbsize'))).toBe(48 * 4);
    expect(await c.count(uniqueMessage(1), 'alice@example.test', ['other@example.net'], WINDOW)).toMatchObject({ accountRecipients: 18, globalRecipients: 18, globalAccounts: 1 });
  });

  it('counts the same on a 3-node Redis Cluster, where every bulk key lives on one node', async () => {
    const cluster: RedisCluster = await startRedisCluster(3);
    const on = new Cluster(cluster.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })));
    try {
      const messages = traffic(120);
      expect(await replay(counter(on), messages)).toEqual(await replay(counter(), messages));
      const holding = cluster.nodes.map((n) => Number(n.cli('dbsize'))).filter((size) => size > 0);
      expect(holding).toHaveLength(1);
    } finally {
      on.disconnect();
      await cluster.stop();
    }
  });
});
