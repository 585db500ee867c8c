// The counters that are sets rather than sums — distinct recipient domains per hour, open sessions per
// account, an account's hourly history — in Redis (atomic Lua, shared by every instance) or in memory
// (the embedded default, and the insurance when Redis fails). The plain counters use rate-limiter-flexible.

import { MARK_COUNTS, MARK_TTL_MS, RECORD_SET_USE, mayRunLate, type PhaseMark } from './late-counts.js';
import type { RedisClient } from './redis.js';

export interface SetAddResult {
  /** the member was not there and the set was full: not added */
  exceeded: boolean;
  /** members after the call */
  count: number;
  /** this call recorded a use of the member (so a refund gives that use back) */
  added: boolean;
  /** ms until the window ends */
  ttlMs: number;
  /** the in-process insurance answered, Redis did not */
  insured?: boolean;
  /** ...for a call that Redis may still run (it was sent, and not answered) */
  mayRunLate?: boolean;
}

export interface Structures {
  /**
   * Adds `member` to a windowed set unless it is full; an existing member always fits. With `mark`, a use
   * it adds, and the phase's counts made before it, are recorded under the mark, to be taken back should
   * the caller stop waiting (late-counts.ts).
   */
  setAdd(key: string, member: string, limit: number, windowMs: number, mark?: PhaseMark): Promise<SetAddResult>;
  /** gives back a use of `member`, if the set is still the window it was counted in (at most `maxTtlMs` left) */
  setRemove(key: string, member: string, maxTtlMs: number): Promise<void>;
  /** registers an open session until `expiresAt`; returns the open sessions count */
  sessionOpen(key: string, id: string, expiresAt: number, now: number): Promise<number>;
  sessionClose(key: string, id: string): Promise<void>;
  /**
   * Open sessions, and this session's place among them by age (0 = oldest). A session missing from the
   * store (opened while it was down, or counted by the insurance) is registered now, so that it counts.
   */
  sessionRank(key: string, id: string, expiresAt: number, now: number): Promise<{ count: number; rank: number | null }>;
  /** adds 1 to the count of an hour (epoch hours) */
  hourIncr(key: string, hour: number, keepHours: number): Promise<void>;
  /** counts of the given hours (0 when absent); with `mark`, records the phase's counts made before it */
  hours(key: string, hours: number[], mark?: PhaseMark): Promise<number[]>;
}

// A set whose members count their uses (a hash of member → uses): a member stays while one use of it
// stands, so giving back one transaction's use never removes a domain another transaction still uses.
const SET_ADD = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  return {0, redis.call('HLEN', KEYS[1]), 1, redis.call('PTTL', KEYS[1])}
end
local n = redis.call('HLEN', KEYS[1])
if n >= tonumber(ARGV[2]) then
  return {1, n, 0, redis.call('PTTL', KEYS[1])}
end
redis.call('HSET', KEYS[1], ARGV[1], 1)
if n == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {0, n + 1, 1, redis.call('PTTL', KEYS[1])}`;

// KEYS[1] the set, KEYS[2] the mark, KEYS[3..] the phase's counters; ARGV[1..3] as SET_ADD's, ARGV[4] the
// mark's ttl, ARGV[5..] the counters' points.
const SET_ADD_MARKED = `${MARK_COUNTS}${RECORD_SET_USE}
local function add()${SET_ADD}
end
local result = add()
if result[3] == 1 then recordSetUse(KEYS[1], KEYS[2], ARGV[1], ARGV[4]) end
markCounts(KEYS[2], 3, 5, ARGV[4])
return result`;

// KEYS[1] the hourly history, KEYS[2] the mark, KEYS[3..] the phase's counters; ARGV[1] the mark's ttl,
// ARGV[2] how many hours, then the hours, then the counters' points.
const HOURS_MARKED = `${MARK_COUNTS}
local n = tonumber(ARGV[2])
local hours = {}
for i = 1, n do hours[i] = ARGV[2 + i] end
local values = redis.call('HMGET', KEYS[1], unpack(hours))
markCounts(KEYS[2], 3, 3 + n, ARGV[1])
return values`;

// Only from the window the use was counted in (see TAKE_BACK): ARGV[2] is the most it may have left.
const SET_REMOVE = `
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 or ttl > tonumber(ARGV[2]) then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1`;

const SESSION_OPEN = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])`;

const SESSION_RANK = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 1 and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) - tonumber(ARGV[3]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
return {redis.call('ZCARD', KEYS[1]), redis.call('ZRANK', KEYS[1], ARGV[1])}`;

// A count given back to the window it was made in only: a key that expired, or was made again for the
// next window (its time to live longer than the counted window has left), is left alone. Given back with
// rate-limiter-flexible's own script, a give-back that reaches Redis just after the window ended would
// make a new key at minus the points, a credit for the whole next window.
const TAKE_BACK = `
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 and ttl <= tonumber(ARGV[2]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return 1
end
return 0`;

const HOUR_INCR = `
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1`;

type Scripted = RedisClient & {
  douaneSetAdd(key: string, member: string, limit: number, windowMs: number): Promise<[number, number, number, number]>;
  douaneSetAddMarked(numberOfKeys: number, ...args: (string | number)[]): Promise<[number, number, number, number]>;
  douaneHoursMarked(numberOfKeys: number, ...args: (string | number)[]): Promise<(string | null)[]>;
  douaneSetRemove(key: string, member: string, maxTtlMs: number): Promise<number>;
  douaneSessionOpen(key: string, id: string, expiresAt: number, now: number): Promise<number>;
  douaneSessionRank(key: string, id: string, expiresAt: number, now: number): Promise<[number, number | null]>;
  douaneHourIncr(key: string, hour: number, ttlSeconds: number): Promise<number>;
  douaneTakeBack(key: string, points: number, maxTtlMs: number): Promise<number>;
};

/** Session removals kept for a later try, at most: past it the oldest are left to their expiry. */
const MAX_UNCLOSED = 100_000;

export class RedisStructures implements Structures {
  private readonly client: Scripted;
  /**
   * Sessions that closed while Redis did not answer: left in Redis, they would count as open until their
   * expiry (the session deadline) and, being the oldest, take the account's places, so that its next
   * sessions are refused and struck. Removed before the account's sessions are counted again, and as
   * soon as Redis answers.
   */
  private readonly unclosed = new Map<string, Set<string>>();
  private unclosedCount = 0;
  private replaying = false;

  constructor(client: RedisClient) {
    client.defineCommand('douaneSetAdd', { numberOfKeys: 1, lua: SET_ADD });
    client.defineCommand('douaneSetAddMarked', { lua: SET_ADD_MARKED });
    client.defineCommand('douaneHoursMarked', { lua: HOURS_MARKED });
    client.defineCommand('douaneSetRemove', { numberOfKeys: 1, lua: SET_REMOVE });
    client.defineCommand('douaneSessionOpen', { numberOfKeys: 1, lua: SESSION_OPEN });
    client.defineCommand('douaneSessionRank', { numberOfKeys: 1, lua: SESSION_RANK });
    client.defineCommand('douaneHourIncr', { numberOfKeys: 1, lua: HOUR_INCR });
    client.defineCommand('douaneTakeBack', { numberOfKeys: 1, lua: TAKE_BACK });
    this.client = client as Scripted;
  }

  async setAdd(key: string, member: string, limit: number, windowMs: number, mark?: PhaseMark): Promise<SetAddResult> {
    const [exceeded, count, added, ttl] = mark
      ? await this.client.douaneSetAddMarked(2 + mark.counted.length, key, mark.marker, ...mark.counted.map((c) => c.key), member, limit, windowMs, MARK_TTL_MS, ...mark.counted.map((c) => c.points))
      : await this.client.douaneSetAdd(key, member, limit, windowMs);
    return { exceeded: exceeded === 1, count, added: added === 1, ttlMs: Math.max(0, ttl) };
  }

  async setRemove(key: string, member: string, maxTtlMs: number): Promise<void> {
    await this.client.douaneSetRemove(key, member, Math.floor(maxTtlMs));
  }

  async sessionOpen(key: string, id: string, expiresAt: number, now: number): Promise<number> {
    // Sent together, in this order on the one connection: the leftovers are gone before the count.
    const [, count] = await Promise.all([this.removeUnclosed(key), this.client.douaneSessionOpen(key, id, expiresAt, now)]);
    this.replayUnclosed();
    return count;
  }

  async sessionClose(key: string, id: string): Promise<void> {
    try {
      await this.client.zrem(key, id);
    } catch (err) {
      this.keepUnclosed(key, [id]);
      throw err;
    }
    this.replayUnclosed();
  }

  async sessionRank(key: string, id: string, expiresAt: number, now: number): Promise<{ count: number; rank: number | null }> {
    const [, [count, rank]] = await Promise.all([this.removeUnclosed(key), this.client.douaneSessionRank(key, id, expiresAt, now)]);
    this.replayUnclosed();
    return { count, rank: rank ?? null };
  }

  private keepUnclosed(key: string, ids: Iterable<string>): void {
    let set = this.unclosed.get(key);
    if (!set) this.unclosed.set(key, (set = new Set()));
    for (const id of ids) {
      if (set.has(id)) continue;
      set.add(id);
      this.unclosedCount++;
    }
    while (this.unclosedCount > MAX_UNCLOSED) {
      const [oldest, ids] = this.unclosed.entries().next().value!;
      this.unclosed.delete(oldest);
      this.unclosedCount -= ids.size;
    }
  }

  private async removeUnclosed(key: string): Promise<void> {
    const ids = this.unclosed.get(key);
    if (!ids) return;
    this.unclosed.delete(key);
    this.unclosedCount -= ids.size;
    try {
      await this.client.zrem(key, ...ids);
    } catch (err) {
      this.keepUnclosed(key, ids);
      throw err;
    }
  }

  /** Redis answered: the removals that failed before are tried again, in the background. */
  private replayUnclosed(): void {
    if (this.replaying || this.unclosed.size === 0) return;
    this.replaying = true;
    void Promise.allSettled([...this.unclosed.keys()].map((k) => this.removeUnclosed(k))).finally(() => {
      this.replaying = false;
    });
  }

  /** session removals waiting for Redis (for tests and metrics) */
  get unclosedSessions(): number {
    return this.unclosedCount;
  }

  async hourIncr(key: string, hour: number, keepHours: number): Promise<void> {
    await this.client.douaneHourIncr(key, hour, keepHours * 3600);
  }

  /**
   * Takes `points` off a counter, if it is still in the window they were counted in: one with at most
   * `maxTtlMs` left (the time the counted window had left, by this process's clock, with a margin).
   * Returns whether it did.
   */
  async takeBack(key: string, points: number, maxTtlMs: number): Promise<boolean> {
    return (await this.client.douaneTakeBack(key, points, Math.floor(maxTtlMs))) === 1;
  }

  async hours(key: string, hours: number[], mark?: PhaseMark): Promise<number[]> {
    if (hours.length === 0) return [];
    const values = mark
      ? await this.client.douaneHoursMarked(2 + mark.counted.length, key, mark.marker, ...mark.counted.map((c) => c.key), MARK_TTL_MS, hours.length, ...hours, ...mark.counted.map((c) => c.points))
      : await this.client.hmget(key, ...hours.map(String));
    return values.map((v) => Number(v ?? 0));
  }
}

/** In-process equivalents: the embedded default (one instance), and the insurance when Redis fails. */
export class MemoryStructures implements Structures {
  /** member → uses, as in Redis */
  private readonly sets = new Map<string, { members: Map<string, number>; expiresAt: number }>();
  private readonly sessions = new Map<string, Map<string, number>>();
  private readonly history = new Map<string, { hours: Map<number, number>; keepHours: number }>();
  private lastSweep = 0;

  constructor(private readonly now: () => number = Date.now) {}

  private sweep(): void {
    const now = this.now();
    if (now - this.lastSweep < 60_000) return;
    this.lastSweep = now;
    for (const [k, s] of this.sets) if (s.expiresAt <= now) this.sets.delete(k);
    for (const [k, m] of this.sessions) {
      for (const [id, exp] of m) if (exp <= now) m.delete(id);
      if (m.size === 0) this.sessions.delete(k);
    }
    // An account idle for its whole history has none left: as in Redis, where the key expires.
    const hour = Math.floor(now / 3_600_000);
    for (const [k, h] of this.history) if (Math.max(...h.hours.keys()) <= hour - h.keepHours) this.history.delete(k);
  }

  async setAdd(key: string, member: string, limit: number, windowMs: number): Promise<SetAddResult> {
    this.sweep();
    const now = this.now();
    let s = this.sets.get(key);
    if (s && s.expiresAt <= now) s = undefined;
    if (!s) {
      s = { members: new Map(), expiresAt: now + windowMs };
      this.sets.set(key, s);
    }
    const ttlMs = s.expiresAt - now;
    const uses = s.members.get(member);
    if (uses !== undefined) {
      s.members.set(member, uses + 1);
      return { exceeded: false, count: s.members.size, added: true, ttlMs };
    }
    if (s.members.size >= limit) return { exceeded: true, count: s.members.size, added: false, ttlMs };
    s.members.set(member, 1);
    return { exceeded: false, count: s.members.size, added: true, ttlMs };
  }

  async setRemove(key: string, member: string): Promise<void> {
    const s = this.sets.get(key);
    const uses = s?.members.get(member);
    if (!s || uses === undefined) return;
    if (uses <= 1) s.members.delete(member);
    else s.members.set(member, uses - 1);
  }

  async sessionOpen(key: string, id: string, expiresAt: number, now: number): Promise<number> {
    this.sweep();
    const m = this.sessions.get(key) ?? new Map<string, number>();
    this.sessions.set(key, m);
    for (const [k, exp] of m) if (exp <= now) m.delete(k);
    m.set(id, expiresAt);
    return m.size;
  }

  async sessionClose(key: string, id: string): Promise<void> {
    this.sessions.get(key)?.delete(id);
  }

  async sessionRank(key: string, id: string, expiresAt: number, now: number): Promise<{ count: number; rank: number | null }> {
    const registered = this.sessions.get(key);
    if (!registered?.has(id)) await this.sessionOpen(key, id, expiresAt, now);
    const open = [...(this.sessions.get(key) ?? new Map<string, number>())].filter(([, exp]) => exp > now).sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1));
    const rank = open.findIndex(([k]) => k === id);
    return { count: open.length, rank: rank < 0 ? null : rank };
  }

  async hourIncr(key: string, hour: number, keepHours: number): Promise<void> {
    this.sweep();
    const h = this.history.get(key) ?? { hours: new Map<number, number>(), keepHours };
    h.keepHours = keepHours;
    this.history.set(key, h);
    h.hours.set(hour, (h.hours.get(hour) ?? 0) + 1);
    for (const k of h.hours.keys()) if (k <= hour - keepHours) h.hours.delete(k);
  }

  async hours(key: string, hours: number[]): Promise<number[]> {
    const h = this.history.get(key)?.hours;
    return hours.map((x) => h?.get(x) ?? 0);
  }

  /** accounts with a history kept (for tests and metrics) */
  get historyKept(): number {
    return this.history.size;
  }
}

/** Redis first; on any error, the in-memory copy answers and the failure is reported. */
export class InsuredStructures implements Structures {
  constructor(
    private readonly primary: Structures,
    private readonly insurance: Structures,
    private readonly onFailure: (op: string, err: Error) => void,
  ) {}

  private async run<T>(op: keyof Structures, args: unknown[]): Promise<T> {
    try {
      return await (this.primary[op] as (...a: unknown[]) => Promise<T>)(...args);
    } catch (err) {
      this.onFailure(op, err as Error);
      return (this.insurance[op] as (...a: unknown[]) => Promise<T>)(...args);
    }
  }

  async setAdd(...a: Parameters<Structures['setAdd']>): Promise<SetAddResult> {
    try {
      return await this.primary.setAdd(...a);
    } catch (err) {
      this.onFailure('setAdd', err as Error);
      return { ...(await this.insurance.setAdd(...a)), insured: true, mayRunLate: mayRunLate(err) };
    }
  }
  setRemove(...a: Parameters<Structures['setRemove']>) {
    return this.run<void>('setRemove', a);
  }
  sessionOpen(...a: Parameters<Structures['sessionOpen']>) {
    return this.run<number>('sessionOpen', a);
  }
  async sessionClose(...a: Parameters<Structures['sessionClose']>): Promise<void> {
    // Closed in the insurance too, whichever answers: a session the insurance opened during an outage and
    // that ends once Redis is back would otherwise hold one of the account's places in the next outage.
    const [primary] = await Promise.allSettled([this.primary.sessionClose(...a), this.insurance.sessionClose(...a)]);
    if (primary.status === 'rejected') this.onFailure('sessionClose', primary.reason as Error);
  }
  sessionRank(...a: Parameters<Structures['sessionRank']>) {
    return this.run<{ count: number; rank: number | null }>('sessionRank', a);
  }
  hourIncr(...a: Parameters<Structures['hourIncr']>) {
    return this.run<void>('hourIncr', a);
  }
  hours(...a: Parameters<Structures['hours']>) {
    return this.run<number[]>('hours', a);
  }
}
