// The Redis connection shared by the limiters, the bulk counters and (later) enforcement: a single
// server, Sentinel or Cluster, configured so that a Redis that is down, slow or frozen never holds a
// session — every command fails within the decision deadline and the in-process insurance decides —
// and so that a reconnect never replays a command (a replayed INCR would count a message twice).

import { Redis, Cluster, type RedisOptions, type ClusterOptions } from 'ioredis';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';

export interface RedisSettings {
  url?: string;
  sentinels?: { host: string; port: number }[];
  sentinel_name?: string;
  cluster?: { host: string; port: number }[];
  username?: string;
  password?: string;
  tls?: boolean;
  key_prefix: string;
}

export type RedisClient = Redis | Cluster;

export function createRedis(settings: RedisSettings, deadlineMs: number, log: Logger, metrics: Metrics): RedisClient {
  // Slightly under the deadline: the command fails first, the insurance still answers in time.
  const commandTimeout = Math.max(50, Math.floor(deadlineMs * 0.8));
  const common: RedisOptions = {
    commandTimeout,
    connectTimeout: Math.max(1000, deadlineMs * 4),
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    enableAutoPipelining: true,
    lazyConnect: false,
    username: settings.username,
    password: settings.password,
    tls: settings.tls ? {} : undefined,
    retryStrategy: (times) => Math.min(200 * times, 2000),
  };
  let client: RedisClient;
  if (settings.cluster?.length) {
    const options: ClusterOptions = {
      redisOptions: common,
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      clusterRetryStrategy: (times) => Math.min(200 * times, 2000),
      slotsRefreshTimeout: Math.max(1000, deadlineMs * 4),
    };
    client = new Cluster(settings.cluster, options);
  } else if (settings.sentinels?.length) {
    client = new Redis({ ...common, sentinels: settings.sentinels, name: settings.sentinel_name ?? 'mymaster' });
  } else {
    client = new Redis(settings.url ?? 'redis://127.0.0.1:6379', common);
  }
  let down = false;
  client.on('error', (err: Error) => {
    metrics.redisErrors.labels('connection').inc();
    if (!down) log.warn({ event: 'redis_error', err: err.message }, 'Redis connection problem; limits use the in-process insurance until it is back');
    down = true;
  });
  client.on('ready', () => {
    if (down) log.info({ event: 'redis_ready' }, 'Redis is back');
    down = false;
    metrics.redisUp.set(1);
  });
  client.on('close', () => metrics.redisUp.set(0));
  return client;
}

/** Waits (bounded) for the first connection, so that the first messages are counted in Redis, not the insurance. */
export async function redisReady(client: RedisClient, timeoutMs: number): Promise<boolean> {
  if (client.status === 'ready') return true;
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      client.off('ready', onReady);
      resolve(ok);
    };
    const onReady = () => done(true);
    const timer = setTimeout(() => done(false), timeoutMs);
    client.on('ready', onReady);
  });
}

/** Readiness: Redis answers PING within the deadline. */
export async function redisPing(client: RedisClient, metrics?: Metrics): Promise<{ ok: boolean; detail?: string }> {
  let result: { ok: boolean; detail?: string };
  try {
    const pong = await client.ping();
    result = pong === 'PONG' ? { ok: true } : { ok: false, detail: `unexpected reply ${pong}` };
  } catch (err) {
    result = { ok: false, detail: (err as Error).message };
  }
  metrics?.redisUp.set(result.ok ? 1 : 0);
  return result;
}
