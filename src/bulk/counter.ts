// Counts, for each band of a message's content fingerprint, the distinct recipients it reached from this
// account, from all accounts, and how many accounts sent it, within the bulk window. Two messages that
// share a band are "the same content" (src/bulk/fingerprint.ts), so a message's counts are the largest
// over its bands (not their union: a template's messages, order confirmations alike but different, share
// a band here and there, and would add up past a campaign's threshold). Redis (HyperLogLog: constant
// memory per band, ~0.8% error) when configured, shared by every instance — the same campaign sent
// through many accounts shows across accounts and instances; exact sets in memory otherwise, and as
// insurance when Redis fails.
// Every recipient a content was sent to is counted, refused ones too: a campaign stays recognised.

import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { BulkFacts } from '../policy/facts.js';
import type { RedisClient } from '../limits/redis.js';
import type { BulkFingerprint } from './fingerprint.js';

class DeadlinePassed extends Error {}

/** Redis failed and limits.on_redis_failure is tempfail: no count stands in for the shared one. */
export class BulkCountsUnavailable extends Error {}

export interface BulkPort {
  /** undefined: not counted (no fingerprint, or `douane policy explain` without given bulk counts) */
  count(fp: BulkFingerprint | undefined, account: string, recipients: string[], windowMs: number): Promise<BulkFacts | undefined>;
}

// All of a message's bands in one script call (one round trip, one command: a message has ~50 bands).
// Most contents are seen once, and three HyperLogLogs per band (about 34 KB of Redis memory per message
// with 48 bands) would make a day's window of ordinary mail cost tens of gigabytes. So a band seen for the
// first time is one small string, "account\nrecipient\n…" (about 10 KB per message), and becomes its three
// counters only when another message shares it: this account's recipients, all recipients, the accounts.
// The band's own key is then "*", kept for a window after the last of its counters was made, so that it
// outlives each of them (they expire a window after they were made): a band whose key is gone has no
// counter left, and its next sighting is a first one again.
// KEYS: each band's key. ARGV: window (ms), account, most recipients kept in a first sighting, recipient
// count, recipients. The counters' keys are the band's key with a suffix: same hash tag, same slot.
// Returns the largest of each count over the bands.
const BANDS_ADD = `
local window = ARGV[1]
local account = ARGV[2]
local n = tonumber(ARGV[4])
-- A first sighting is kept only when it can be read back: names without a line break.
local firstSighting = nil
if n <= tonumber(ARGV[3]) and not string.find(account, '\\n', 1, true) then
  firstSighting = account
  for i = 5, 4 + n do
    if string.find(ARGV[i], '\\n', 1, true) then
      firstSighting = nil
      break
    end
    firstSighting = firstSighting .. '\\n' .. ARGV[i]
  end
end
local madeCounter = false
local function addAll(key, values, from, to, ttl)
  local new = redis.call('EXISTS', key) == 0
  if new then madeCounter = true end
  -- PFADD in slices: unpack() of thousands of values would overflow Lua's stack.
  for i = from, to, 500 do
    local j = math.min(i + 499, to)
    local slice = {}
    for k = i, j do slice[#slice + 1] = values[k] end
    redis.call('PFADD', key, unpack(slice))
  end
  if from > to then redis.call('PFADD', key) end
  if new then redis.call('PEXPIRE', key, ttl or window) end
  return redis.call('PFCOUNT', key)
end
local best = {0, 0, 0}
for b = 1, #KEYS do
  local band = KEYS[b]
  local a, g, c
  -- Counters without the band's key: made by an earlier version, which kept no first sightings.
  if firstSighting and redis.call('EXISTS', band .. ':g') == 0 and redis.call('SET', band, firstSighting, 'PX', window, 'NX') then
    a, g, c = n, n, 1
  else
    -- All of a band's counters end together, a window after its first sighting (as in memory): a counter
    -- made later (another account's) gets what is left of it.
    local seen = redis.call('GET', band)
    local left = window
    if seen and seen ~= '*' then
      -- The first sighting becomes counters, before this message is added to them.
      left = redis.call('PTTL', band)
      if left <= 0 then left = window end
      local parts = {}
      for part in string.gmatch(seen, '[^\\n]+') do parts[#parts + 1] = part end
      addAll(band .. ':a:' .. parts[1], parts, 2, #parts, left)
      addAll(band .. ':g', parts, 2, #parts, left)
      addAll(band .. ':n', parts, 1, 1, left)
    else
      local counting = redis.call('PTTL', band .. ':g')
      if counting > 0 then left = counting end
    end
    madeCounter = false
    a = addAll(band .. ':a:' .. account, ARGV, 5, 4 + n, left)
    g = addAll(band .. ':g', ARGV, 5, 4 + n, left)
    c = addAll(band .. ':n', ARGV, 2, 2, left)
    -- A counter made now lives a window: so does the band's key from now on.
    if madeCounter or seen ~= '*' then redis.call('SET', band, '*', 'PX', window) end
  end
  if a > best[1] then best[1] = a end
  if g > best[2] then best[2] = g end
  if c > best[3] then best[3] = c end
end
return best`;

/**
 * A message to more recipients than this is counted at once, in its counters: their three keys cost less
 * than a longer first sighting (about 200 bytes a key; recipients are 20 to 40 bytes each).
 */
const FIRST_SIGHTING_MAX_RECIPIENTS = 16;

type Scripted = RedisClient & { douaneBulkAdd(...args: (string | number)[]): Promise<[number, number, number]> };

/**
 * One hash tag for every bulk key: a Redis Cluster keeps them on one node, so that one script can update
 * all of a message's bands. Bulk counting then loads that node more than the others (documented).
 */
const TAG = '{douane-bulk}';

interface BandSets {
  byAccount: Map<string, Set<string>>;
  all: Set<string>;
  accounts: Set<string>;
  expiresAt: number;
  /** values held in its sets, counted against MAX_VALUES */
  values: number;
}

/**
 * In memory as in Redis, most contents are seen once: all the bands of a message seen for the first time
 * point to one record of it, which becomes a band's sets only when another message shares that band
 * (sets for every band cost about 40 KB a message; this, about 6 KB).
 */
interface FirstSighting {
  account: string;
  rcpts: string[];
  expiresAt: number;
}

type Band = BandSets | FirstSighting;

/**
 * A band's sets stop growing at this size (each account's, all recipients, the accounts): the count is
 * then far past any sane threshold, and one campaign from many accounts cannot fill the memory.
 */
const MEMORY_CAP = 10_000;
/**
 * Values kept in all the bands' sets together, at most (some 100 MB): past it the oldest bands are
 * forgotten first, as past MAX_BANDS.
 */
const MAX_VALUES = 3_000_000;
/**
 * Bands kept in memory, at most (about 20 000 messages seen once, some 120 MB): past it the oldest are
 * forgotten first, and their content counts afresh. Redis keeps a whole window, in any number.
 */
const MAX_BANDS = 1_000_000;

export class BulkCounter implements BulkPort {
  /**
   * By band, in the order they were first seen: the order their window ends in, as long as the window
   * stays the same (a reload that shortens it puts bands that end sooner behind ones that end later).
   */
  private readonly memory = new Map<string, Band>();
  private readonly maxBands: number;
  private readonly maxValues: number;
  /** values held in all the bands' sets */
  private values = 0;
  private lastFullSweep = 0;

  constructor(
    private readonly opts: { redis?: RedisClient; keyPrefix: string; deadlineMs: number; metrics: Metrics; log: Logger; now?: () => number; onFailure?: 'insurance' | 'tempfail'; maxBands?: number; maxValues?: number },
  ) {
    opts.redis?.defineCommand('douaneBulkAdd', { lua: BANDS_ADD });
    this.maxBands = opts.maxBands ?? MAX_BANDS;
    this.maxValues = opts.maxValues ?? MAX_VALUES;
  }

  /** bands counted in memory (for tests and metrics) */
  get bandsKept(): number {
    return this.memory.size;
  }

  /** values held in the bands' sets (for tests) */
  get valuesKept(): number {
    return this.values;
  }

  private forget(band: string): void {
    const b = this.memory.get(band);
    if (b && 'all' in b) this.values -= b.values;
    this.memory.delete(band);
  }

  private get now(): number {
    return (this.opts.now ?? Date.now)();
  }

  async count(fp: BulkFingerprint | undefined, account: string, recipients: string[], windowMs: number): Promise<BulkFacts | undefined> {
    if (!fp) return undefined;
    // No sender at all (a bounce on a listener without AUTH) is counted as the null sender.
    const acct = account.toLowerCase() || '<>';
    const rcpts = [...new Set(recipients.map((r) => r.toLowerCase()))];
    let counts: [number, number, number][];
    let degraded = false;
    if (this.opts.redis) {
      try {
        counts = [await this.withDeadline(this.redisBands(fp.bands, acct, rcpts, windowMs))];
        // Redis answers again: what the insurance counted meanwhile is its own view, no longer needed.
        if (this.memory.size) this.memory.clear();
      } catch (err) {
        const timedOut = err instanceof DeadlinePassed;
        this.opts.metrics.redisErrors.labels(timedOut ? 'deadline' : 'command').inc();
        if (this.opts.onFailure === 'tempfail') {
          this.opts.log.warn({ event: 'bulk_unavailable', err: (err as Error).message }, 'Redis failed; no bulk counts (limits.on_redis_failure: tempfail)');
          throw new BulkCountsUnavailable(`bulk counts unavailable: ${(err as Error).message}`);
        }
        this.opts.metrics.limiterInsurance.labels('bulk').inc();
        this.opts.log.warn({ event: 'bulk_insurance', err: (err as Error).message }, 'Redis failed; bulk counts from this instance only');
        counts = this.memoryBands(fp.bands, acct, rcpts, windowMs);
        degraded = true;
      }
    } else counts = this.memoryBands(fp.bands, acct, rcpts, windowMs);
    const facts: BulkFacts = { fingerprint: fp.id, accountRecipients: 0, globalRecipients: 0, globalAccounts: 0, ...(degraded ? { degraded } : {}) };
    for (const [a, g, n] of counts) {
      facts.accountRecipients = Math.max(facts.accountRecipients, a);
      facts.globalRecipients = Math.max(facts.globalRecipients, g);
      facts.globalAccounts = Math.max(facts.globalAccounts, n);
    }
    return facts;
  }

  private redisBands(bands: string[], account: string, rcpts: string[], windowMs: number): Promise<[number, number, number]> {
    const keys = bands.map((band) => `${this.opts.keyPrefix}:bulk:${TAG}:${band}`);
    // Without numberOfKeys in defineCommand, ioredis expects it as the first argument.
    return (this.opts.redis as Scripted).douaneBulkAdd(keys.length, ...keys, windowMs, account, FIRST_SIGHTING_MAX_RECIPIENTS, rcpts.length, ...rcpts);
  }

  private memoryBands(bands: string[], account: string, rcpts: string[], windowMs: number): [number, number, number][] {
    const now = this.now;
    // The oldest first: those whose window ended are at the front.
    for (const [band, b] of this.memory) {
      if (b.expiresAt > now) break;
      this.forget(band);
    }
    let sighting: FirstSighting | undefined;
    const counts = bands.map((band): [number, number, number] => {
      let b = this.memory.get(band);
      if (b && b.expiresAt <= now) {
        this.forget(band);
        b = undefined;
      }
      if (!b) {
        sighting ??= { account, rcpts: rcpts.slice(0, MEMORY_CAP), expiresAt: now + windowMs };
        this.memory.set(band, sighting);
        return [sighting.rcpts.length, sighting.rcpts.length, 1];
      }
      if (!('all' in b)) {
        // Shared with an earlier message: its first sighting becomes the band's sets, then this one is added.
        b = { byAccount: new Map([[b.account, new Set(b.rcpts)]]), all: new Set(b.rcpts), accounts: new Set([b.account]), expiresAt: b.expiresAt, values: 2 * b.rcpts.length + 1 };
        this.values += b.values;
        this.memory.set(band, b);
      }
      const before = b.values;
      // Past MEMORY_CAP accounts, a new one's recipients are counted for this message without being kept.
      let mine = b.byAccount.get(account);
      if (!mine) {
        mine = new Set<string>();
        if (b.accounts.size < MEMORY_CAP) b.byAccount.set(account, mine);
      }
      for (const r of rcpts) {
        if (mine.size < MEMORY_CAP && !mine.has(r)) {
          mine.add(r);
          b.values++;
        }
        if (b.all.size < MEMORY_CAP && !b.all.has(r)) {
          b.all.add(r);
          b.values++;
        }
      }
      if (b.accounts.size < MEMORY_CAP && !b.accounts.has(account)) {
        b.accounts.add(account);
        b.values++;
      }
      this.values += b.values - before;
      return [mine.size, b.all.size, b.accounts.size];
    });
    if (this.memory.size > this.maxBands && now - this.lastFullSweep >= 60_000) {
      // Ended bands behind live ones (the window was shortened) go before any live one is forgotten.
      this.lastFullSweep = now;
      for (const [band, b] of this.memory) if (b.expiresAt <= now) this.forget(band);
    }
    for (const band of this.memory.keys()) {
      if (this.memory.size <= this.maxBands && this.values <= this.maxValues) break;
      this.forget(band);
    }
    return counts;
  }

  private async withDeadline<T>(p: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new DeadlinePassed(`no answer within ${this.opts.deadlineMs} ms`)), this.opts.deadlineMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }
}
