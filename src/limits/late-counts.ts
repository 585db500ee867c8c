// Counts Redis makes after Douane stopped waiting for them. A Redis that freezes (a stopped process, a
// fork stall, a black-holed network) keeps the commands it was sent in its socket and runs them when it
// thaws: the counts of a message that was tempfailed meanwhile, or refused by the insurance, would then
// use up the account's allowance, at every retry of the client. Nothing tells Douane whether a command
// that timed out ran; so each phase's counts are followed, on the same connection, by a mark that records
// them (Redis runs one connection's commands in order: a mark exists only if the counts before it ran).
// A phase that was not answered is cancelled: the cancel takes back what the mark recorded, or, if the
// mark has not run yet, leaves word for it to take the counts back as soon as it runs. Both are atomic
// scripts, so whichever runs first, a count is taken back once, and only within the window it was made in.
// The mark rides on a script the phase runs anyway, after its counts (the recipient's domain, the account's
// hourly history: structures.ts), so that it costs no command of its own; a phase without one sends it alone.

import type { Logger } from '../log.js';
import type { RedisClient } from './redis.js';

/**
 * How long a mark, or a cancel waiting for its mark, is kept in Redis. Every phase leaves one (most are
 * never needed, and deleting each would cost a command a phase), so it is short: its time runs from when
 * Redis runs it, which for a frozen Redis is when it thaws, and the cancel comes as soon as Douane's
 * connection is back, within seconds. At 100 messages a second with five recipients, some 10 MB.
 */
export const MARK_TTL_MS = 60_000;
/** Cancels kept for Redis to come back, at most, and for how long: past either, their counts stand. */
const MAX_PENDING = 100_000;
const PENDING_MAX_AGE_MS = 3_600_000;
/** Cancels sent in one go, and how long to wait before the next try while Redis refuses them (doubling up to the most). */
const BATCH = 1000;
const RETRY_MS = 1000;
const RETRY_MAX_MS = 30_000;

// A record is "c|points|expiry" for a counter, "s|member|expiry" for a use of a set member; expiry is when
// the key's window ends (ms), which a later window of the same key never shares.
const UNDO = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function expiry(key, now)
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then return -1 end
  return now + ttl
end
local function undo(key, record, now)
  local kind, what, at = string.match(record, '^(%a)|(.*)|(%-?%d+)$')
  local e = expiry(key, now)
  if e < 0 or math.abs(e - tonumber(at)) > 1000 then return 0 end
  if kind == 'c' then
    redis.call('DECRBY', key, what)
  elseif redis.call('HINCRBY', key, what, -1) <= 0 then
    redis.call('HDEL', key, what)
  end
  return 1
end
local function record(marker, key, rec, now)
  if redis.call('HEXISTS', marker, 'x:' .. key) == 1 then
    redis.call('HDEL', marker, 'x:' .. key)
    undo(key, rec, now)
  else
    redis.call('HSET', marker, key, rec)
  end
end
`;

/**
 * Records the counts of KEYS[first..], whose points are ARGV[points..] in the same order, under `marker`,
 * and marks the phase as recorded: a cancel that comes later finds them there.
 */
export const MARK_COUNTS = `${UNDO}
local function markCounts(marker, first, points, ttl)
  local now = now_ms()
  for i = first, #KEYS do record(marker, KEYS[i], 'c|' .. ARGV[points + i - first] .. '|' .. expiry(KEYS[i], now), now) end
  redis.call('HSET', marker, '_', '1')
  redis.call('PEXPIRE', marker, ttl)
end
`;

/** KEYS[1] the mark, KEYS[2..] the counters just counted; ARGV[1] ttl, ARGV[2..] their points. */
const MARK = `${MARK_COUNTS}
markCounts(KEYS[1], 2, 2, ARGV[1])
return 1`;

/** KEYS[1] the mark, KEYS[2..] the keys whose counts are taken back; ARGV[1] ttl. Returns how many were. */
const CANCEL = `${UNDO}
local now = now_ms()
local undone = 0
for i = 2, #KEYS do
  local rec = redis.call('HGET', KEYS[1], KEYS[i])
  if rec then
    redis.call('HDEL', KEYS[1], KEYS[i])
    undone = undone + undo(KEYS[i], rec, now)
  elseif redis.call('HEXISTS', KEYS[1], '_') == 0 then
    redis.call('HSET', KEYS[1], 'x:' .. KEYS[i], '1')
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return undone`;

/**
 * A set's use, recorded by the script that adds it (structures.ts): only that script knows whether it
 * added the member.
 */
export const RECORD_SET_USE = `
local function recordSetUse(set, marker, member, ttl)
  local now = now_ms()
  record(marker, set, 's|' .. member .. '|' .. expiry(set, now), now)
  redis.call('PEXPIRE', marker, ttl)
end
`;

/**
 * Whether a command that failed with `err` may still be run by Redis: not one refused before it was sent,
 * nor one Redis answered with an error (out of memory, READONLY, BUSY: it did not run, and will not).
 */
export function mayRunLate(err: unknown): boolean {
  if ((err as Error)?.name === 'ReplyError') return false;
  const message = (err as Error)?.message ?? '';
  return !/enableOfflineQueue options is false|^Redis connection is not ready/.test(message);
}

type Scripted = RedisClient & {
  douaneMarkCounts(numberOfKeys: number, ...args: (string | number)[]): Promise<number>;
  douaneCancelCounts(numberOfKeys: number, ...args: (string | number)[]): Promise<number>;
};

/** A phase's counts, to be recorded under its mark by a script the phase runs after them. */
export interface PhaseMark {
  marker: string;
  counted: { key: string; points: number }[];
}

/** What a phase counted in Redis without an answer: the keys to take back, under the phase's mark. */
export interface Unanswered {
  marker: string;
  keys: string[];
}

export class LateCounts {
  private readonly client: Scripted;
  /** mark → keys to take back, and when the cancel was asked */
  private readonly pending = new Map<string, { keys: Set<string>; since: number }>();
  private timer?: NodeJS.Timeout;
  private flushing = false;
  private retryMs = RETRY_MS;

  constructor(
    client: RedisClient,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    client.defineCommand('douaneMarkCounts', { lua: MARK });
    client.defineCommand('douaneCancelCounts', { lua: CANCEL });
    this.client = client as Scripted;
    client.on('ready', () => {
      this.retryMs = RETRY_MS;
      this.flush();
    });
  }

  /**
   * Sent right after the counts it records, in the same turn of the event loop, so that it follows them on
   * the connection. Not waited for: it costs the phase nothing, and if it fails the counts were not sent either.
   */
  mark(marker: string, counted: { key: string; points: number }[]): void {
    if (counted.length === 0) return;
    this.client.douaneMarkCounts(1 + counted.length, marker, ...counted.map((c) => c.key), MARK_TTL_MS, ...counted.map((c) => c.points)).catch(() => undefined);
  }

  /** Takes back what the phase counted under `marker` in `keys`, once Redis answers. */
  cancel({ marker, keys }: Unanswered): void {
    if (keys.length === 0) return;
    const entry = this.pending.get(marker) ?? { keys: new Set<string>(), since: this.now() };
    for (const k of keys) entry.keys.add(k);
    this.pending.set(marker, entry);
    while (this.pending.size > MAX_PENDING) this.pending.delete(this.pending.keys().next().value!);
    this.flush();
  }

  /** cancels waiting for Redis (for tests and metrics) */
  get waiting(): number {
    return this.pending.size;
  }

  private flush(): void {
    if (this.flushing || this.pending.size === 0) return;
    this.flushing = true;
    const now = this.now();
    const batch: [string, { keys: Set<string>; since: number }][] = [];
    for (const [marker, e] of this.pending) {
      if (now - e.since >= PENDING_MAX_AGE_MS) this.pending.delete(marker);
      else if (batch.push([marker, e]) === BATCH) break;
    }
    let answered = false;
    void Promise.allSettled(
      batch.map(async ([marker, e]) => {
        const keys = [...e.keys];
        const undone = await this.client.douaneCancelCounts(1 + keys.length, marker, ...keys, MARK_TTL_MS);
        answered = true;
        for (const k of keys) e.keys.delete(k);
        if (e.keys.size === 0 && this.pending.get(marker) === e) this.pending.delete(marker);
        if (undone > 0) this.log.info({ event: 'late_counts_undone', counts: undone }, 'counts Redis made after the phase was decided without them were taken back');
      }),
    ).finally(() => {
      this.flushing = false;
      clearTimeout(this.timer);
      this.timer = undefined;
      if (this.pending.size > 0) {
        // The next batch at once while Redis takes them; while it refuses them all, less and less often.
        this.retryMs = answered ? RETRY_MS : Math.min(RETRY_MAX_MS, this.retryMs * 2);
        this.timer = setTimeout(() => this.flush(), answered ? 0 : this.retryMs);
        this.timer.unref();
      }
    });
  }

  close(): void {
    clearTimeout(this.timer);
  }
}
