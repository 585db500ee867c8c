// Counts, for each band of a message's content fingerprint, the distinct recipients it reached from this
// account, from all accounts, and how many accounts sent it, within the bulk window. Two messages that
// share a band are "the same content" (src/bulk/fingerprint.ts), so a message's counts are the largest
// over its bands. Redis (HyperLogLog: constant memory per band, ~0.8% error) when configured, shared by
// every instance — the same campaign sent through many accounts shows across accounts and instances;
// exact sets in memory otherwise, and as insurance when Redis fails.
// Every recipient a content was sent to is counted, refused ones too: a campaign stays recognised.

import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { BulkFacts } from '../policy/facts.js';
import type { RedisClient } from '../limits/redis.js';
import type { BulkFingerprint } from './fingerprint.js';

export interface BulkPort {
  /** undefined: not counted (no fingerprint, or `douane policy explain` without given bulk counts) */
  count(fp: BulkFingerprint | undefined, account: string, recipients: string[], windowMs: number): Promise<BulkFacts | undefined>;
}

// All of a message's bands in one script call (one round trip, one command: a message has ~50 bands).
// KEYS: for each band, its per-account, all-accounts and accounts keys. ARGV: window, account,
// recipient count, recipients. Returns the largest of each count over the bands.
const BANDS_ADD = `
local n = tonumber(ARGV[3])
local function add(key, from, to)
  local created = redis.call('EXISTS', key) == 0
  -- PFADD in slices: unpack() of thousands of values would overflow Lua's stack.
  for i = from, to, 500 do
    local j = math.min(i + 499, to)
    local slice = {}
    for k = i, j do slice[#slice + 1] = ARGV[k] end
    redis.call('PFADD', key, unpack(slice))
  end
  if from > to then redis.call('PFADD', key) end
  if created then redis.call('PEXPIRE', key, ARGV[1]) end
  return redis.call('PFCOUNT', key)
end
local best = {0, 0, 0}
for b = 1, #KEYS, 3 do
  local a = add(KEYS[b], 4, 3 + n)
  local g = add(KEYS[b + 1], 4, 3 + n)
  local created = redis.call('EXISTS', KEYS[b + 2]) == 0
  redis.call('PFADD', KEYS[b + 2], ARGV[2])
  if created then redis.call('PEXPIRE', KEYS[b + 2], ARGV[1]) end
  local c = redis.call('PFCOUNT', KEYS[b + 2])
  if a > best[1] then best[1] = a end
  if g > best[2] then best[2] = g end
  if c > best[3] then best[3] = c end
end
return best`;

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
}

/** Sets larger than this stop growing: the count is already far past any sane threshold. */
const MEMORY_CAP = 100_000;

export class BulkCounter implements BulkPort {
  private readonly memory = new Map<string, BandSets>();
  private lastSweep = 0;

  constructor(
    private readonly opts: { redis?: RedisClient; keyPrefix: string; deadlineMs: number; metrics: Metrics; log: Logger; now?: () => number },
  ) {
    opts.redis?.defineCommand('douaneBulkAdd', { lua: BANDS_ADD });
  }

  private get now(): number {
    return (this.opts.now ?? Date.now)();
  }

  async count(fp: BulkFingerprint | undefined, account: string, recipients: string[], windowMs: number): Promise<BulkFacts | undefined> {
    if (!fp) return undefined;
    const acct = account.toLowerCase();
    const rcpts = [...new Set(recipients.map((r) => r.toLowerCase()))];
    let counts: [number, number, number][];
    if (this.opts.redis) {
      try {
        counts = [await this.withDeadline(this.redisBands(fp.bands, acct, rcpts, windowMs))];
      } catch (err) {
        this.opts.metrics.redisErrors.labels('command').inc();
        this.opts.metrics.limiterInsurance.labels('bulk').inc();
        this.opts.log.warn({ event: 'bulk_insurance', err: (err as Error).message }, 'Redis failed; bulk counts from this instance only');
        counts = fp.bands.map((band) => this.memoryBand(band, acct, rcpts, windowMs));
      }
    } else counts = fp.bands.map((band) => this.memoryBand(band, acct, rcpts, windowMs));
    const facts: BulkFacts = { fingerprint: fp.id, accountRecipients: 0, globalRecipients: 0, globalAccounts: 0 };
    for (const [a, g, n] of counts) {
      facts.accountRecipients = Math.max(facts.accountRecipients, a);
      facts.globalRecipients = Math.max(facts.globalRecipients, g);
      facts.globalAccounts = Math.max(facts.globalAccounts, n);
    }
    return facts;
  }

  private redisBands(bands: string[], account: string, rcpts: string[], windowMs: number): Promise<[number, number, number]> {
    const keys = bands.flatMap((band) => {
      const base = `${this.opts.keyPrefix}:bulk:${TAG}:${band}`;
      return [`${base}:a:${account}`, `${base}:g`, `${base}:n`];
    });
    // Without numberOfKeys in defineCommand, ioredis expects it as the first argument.
    return (this.opts.redis as Scripted).douaneBulkAdd(keys.length, ...keys, windowMs, account, rcpts.length, ...rcpts);
  }

  private memoryBand(band: string, account: string, rcpts: string[], windowMs: number): [number, number, number] {
    const now = this.now;
    if (now - this.lastSweep > 60_000) {
      this.lastSweep = now;
      for (const [k, v] of this.memory) if (v.expiresAt <= now) this.memory.delete(k);
    }
    let b = this.memory.get(band);
    if (!b || b.expiresAt <= now) {
      b = { byAccount: new Map(), all: new Set(), accounts: new Set(), expiresAt: now + windowMs };
      this.memory.set(band, b);
    }
    const mine = b.byAccount.get(account) ?? new Set<string>();
    b.byAccount.set(account, mine);
    for (const r of rcpts) {
      if (mine.size < MEMORY_CAP) mine.add(r);
      if (b.all.size < MEMORY_CAP) b.all.add(r);
    }
    b.accounts.add(account);
    return [mine.size, b.all.size, b.accounts.size];
  }

  private async withDeadline<T>(p: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${this.opts.deadlineMs} ms`)), this.opts.deadlineMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }
}
