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

/**
 * An account's part of a Redis key: its hash tag, so that all of an account's keys are in one Cluster
 * slot. A brace would end the tag early, so braces become "_" inside it; a name that had any is then
 * followed by the whole name in hex, so that "a{b}@x" and "a_b_@x" stay two accounts (and a name without
 * braces keeps the key it always had).
 */
export function accountTag(name: string): string {
  const tag = `{${name.replace(/[{}]/g, '_')}}`;
  return /[{}]/.test(name) ? `${tag}~${Buffer.from(name, 'utf8').toString('hex')}` : tag;
}

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
    // A frozen Redis never finishes closing a connection; see dropOnHang.
    disconnectTimeout: 100,
    // A master demoted to replica (a failover behind a DNS name or a managed endpoint) keeps the
    // connection and answers READONLY to every write: reconnect, to whatever the name points at now.
    // The command itself is not sent again (1, not 2): a count must never be made twice.
    reconnectOnError: (err) => /^READONLY\b/.test(err.message) ? 1 : false,
  };
  let client: RedisClient;
  if (settings.cluster?.length) {
    const options: ClusterOptions = {
      redisOptions: common,
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      clusterRetryStrategy: (times) => Math.min(200 * times, 2000),
      slotsRefreshTimeout: Math.max(1000, deadlineMs * 4),
      // A command for a node that is unreachable (or whose reconnect has not passed its ready check: a
      // frozen one) fails at once, rather than being retried every 100 ms up to 16 times past the
      // deadline; the insurance decides, and the slots are refreshed every 5 s (slotsRefreshInterval).
      retryDelayOnFailover: 0,
      retryDelayOnClusterDown: 0,
    };
    client = new Cluster(settings.cluster, options);
  } else if (settings.sentinels?.length) {
    client = new Redis({ ...common, sentinels: settings.sentinels, name: settings.sentinel_name ?? 'mymaster' });
  } else {
    client = new Redis(settings.url ?? 'redis://127.0.0.1:6379', common);
  }
  metrics.usesRedis();
  // down: between a failure and the next 'ready' (logged once each way); hung: the connection was dropped
  // because a command timed out on it, and its close has not been seen yet.
  let down = false;
  let hung = false;
  client.on('error', (err: Error) => {
    metrics.redisErrors.labels('connection').inc();
    if (!down) log.warn({ event: 'redis_error', err: err.message }, 'Redis connection problem; limits use the in-process insurance until it is back');
    down = true;
  });
  client.on('ready', () => {
    if (down) log.info({ event: 'redis_ready' }, 'Redis is back');
    down = hung = false;
    metrics.redisUp.set(1);
  });
  client.on('close', () => metrics.redisUp.set(0));

  // A Redis that hangs (a frozen process, a black-holed network) keeps its connection open, so ioredis
  // still counts it as ready and every command waits out its timeout: each phase of each session would
  // pay the whole deadline for as long as the hang lasts. The first command that times out on a ready
  // connection therefore drops it (ending it, destroyed after disconnectTimeout since a frozen peer never
  // closes its side). While ioredis reconnects, commands fail at once (no offline queue) and the insurance
  // decides without waiting; the reconnect's ready check passes only once Redis answers. ioredis reports a
  // command timeout to the command's caller only, so every command sent is watched here.
  const onCommandError = (err: unknown) => {
    if ((err as Error)?.message !== 'Command timed out' || client.status !== 'ready' || hung) return;
    hung = down = true;
    metrics.redisErrors.labels('hang').inc();
    metrics.redisUp.set(0);
    log.warn({ event: 'redis_hung', timeout_ms: commandTimeout }, `Redis did not answer within ${commandTimeout} ms; reconnecting, limits use the in-process insurance until it answers`);
    client.disconnect(true);
  };
  const send = client.sendCommand.bind(client) as (...args: unknown[]) => Promise<unknown>;
  (client as unknown as { sendCommand: typeof send }).sendCommand = (...args: unknown[]) => {
    const reply = send(...args);
    reply.catch(onCommandError);
    return reply;
  };
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

/** Readiness: Redis answers PING within the deadline, and (a single server) takes writes. */
export async function redisPing(client: RedisClient, metrics?: Metrics): Promise<{ ok: boolean; detail?: string }> {
  let result: { ok: boolean; detail?: string };
  try {
    const pong = await client.ping();
    result = pong === 'PONG' ? { ok: true } : { ok: false, detail: `unexpected reply ${pong}` };
    // A replica answers PING and refuses every count. A Cluster routes each key to its master itself;
    // a user not allowed ROLE leaves the PING to speak.
    if (result.ok && !(client instanceof Cluster)) {
      const role = (await client.call('ROLE').catch(() => undefined)) as unknown[] | undefined;
      if (Array.isArray(role) && role[0] !== 'master') result = { ok: false, detail: `Redis is a ${String(role[0])} (read-only): every count fails; point limits.redis at the master` };
    }
  } catch (err) {
    result = { ok: false, detail: (err as Error).message };
  }
  metrics?.redisUp.set(result.ok ? 1 : 0);
  return result;
}
