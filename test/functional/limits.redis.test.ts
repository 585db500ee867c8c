// The limiter on a real Redis, through the client the gateway makes (auto-pipelined): its first counts,
// sent while other commands already wait in the same pipeline, as on a gateway's first busy seconds.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
});
