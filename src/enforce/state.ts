// Enforcement state shared by every instance (Redis) or held by the one instance of the embedded
// default (memory, and a file in the state directory): strikes per account in a sliding window, which ladder steps were taken, suspensions,
// throttles, suspensions waiting for approval, and the circuit breaker.

import { randomUUID } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { accountTag, type RedisClient } from '../limits/redis.js';

export interface StrikeRecord {
  id: string;
  event: string;
  weight: number;
  at: number;
  rule?: string;
  reference: string;
}

export interface Suspension {
  since: number;
  /** ms since epoch; absent: until reinstated */
  until?: number;
  /** local sending block only, or the account locked in the lifecycle API too */
  action: 'suspend_sending' | 'suspend_account';
  reason: string;
  /** incident reference of the strike that crossed the threshold */
  reference: string;
  by: string;
  /** the rule whose strike crossed the threshold, and the contract article it rests on (the refusal names them) */
  rule?: string;
  article?: string;
  /**
   * Who locked the account in the lifecycle API, once the lock was carried out: Douane, or someone before
   * it (the API found it locked or closed already), whose lock a reinstatement here leaves as it is.
   */
  lockedBy?: 'douane' | 'someone_else';
}

export interface Throttle {
  factor: number;
  until: number;
  reference: string;
}

export interface Pending {
  action: 'suspend_sending' | 'suspend_account';
  at: number;
  total: number;
  reference: string;
  reason: string;
  until?: number;
}

export interface Breaker {
  open: boolean;
  since?: number;
  reason?: string;
}

export interface AccountState {
  suspension?: Suspension;
  throttle?: Throttle;
  pending?: Pending;
}

export interface EnforcementState {
  /** adds a strike and returns the total weight in the window (older strikes fall out) */
  addStrike(account: string, s: StrikeRecord, windowMs: number): Promise<number>;
  strikes(account: string, windowMs: number): Promise<StrikeRecord[]>;
  /**
   * true the first time within `ttlMs` (one instance takes a ladder step, one strike per cooldown); with
   * `holder`, true again for the same holder (a strike counted again after a failure past its claim)
   */
  claim(key: string, ttlMs: number, holder?: string): Promise<boolean>;
  /** keeps a claim still held for `ttlMs` from now; one removed meanwhile (a reinstatement) stays removed */
  holdClaim(key: string, ttlMs: number): Promise<void>;
  /** gives a claim back: the next one to ask gets it */
  dropClaim(key: string): Promise<void>;
  /** Clears the account's strikes, suspension, throttle and claims, and notes when (reinstatedAt). */
  resetAccount(account: string): Promise<void>;
  /**
   * When the account was last reset (reinstated), within the longest strike window: a strike or a
   * suspension from before it, written back late (a deferred strike, a state lost and restored), is
   * not the account's any more.
   */
  reinstatedAt(account: string): Promise<number | undefined>;
  account(account: string): Promise<AccountState>;
  /**
   * Sets the account's suspension, in one step that nothing can come between: a lock (suspend_account)
   * is never replaced by a weaker suspension, from this instance or another. With `update`, the
   * suspension in force is replaced only if it is still the same one (same incident and action): a
   * reinstatement that came meanwhile is not undone. Returns the suspension in force afterwards.
   */
  setSuspension(account: string, s: Suspension, opts?: { update?: boolean }): Promise<Suspension | undefined>;
  setThrottle(account: string, t: Throttle): Promise<void>;
  setPending(account: string, p: Pending | undefined): Promise<void>;
  pendingAccounts(): Promise<string[]>;
  suspendedAccounts(): Promise<string[]>;
  /** records an automatic suspension; returns how many happened in the last hour */
  countSuspension(at: number): Promise<number>;
  breaker(): Promise<Breaker>;
  setBreaker(b: Breaker): Promise<void>;
  /**
   * Whether Douane may hold a lock on the account in the lifecycle API: set before each lock call, cleared
   * once an unlock went through. Kept apart from the account's state, which a reinstatement clears before
   * the unlock is carried out.
   */
  lockHeld(account: string): Promise<boolean>;
  setLockHeld(account: string, held: boolean): Promise<void>;
  /**
   * The account an address (an alias, a bare login) was last known to belong to: kept where every
   * instance and a restart find it, so that while the lifecycle API does not answer, an alias is still
   * its account (and that account's suspension holds).
   */
  owner(address: string): Promise<string | undefined>;
  /**
   * True, once, when the shared state was lost since this process last looked (Redis restarted without
   * its data, a replica promoted without it): a mark kept in the state is gone or another. The caller
   * writes back what it knows.
   */
  lost(): Promise<boolean>;
  /**
   * The mark as last seen, and the one an earlier run saw (kept by the caller between runs): with it, the
   * first look after a start also finds a state lost while this instance was stopped.
   */
  markSeen?(): string | undefined;
  seedMark?(mark: string): void;
  /** the loss lost() last reported was seen only through the mark an earlier run kept */
  lossFromEarlierRun?(): boolean;
  /** whether what was known has been written back since the state was lost (by any instance) */
  restoredAlready?(): Promise<boolean>;
  /** writes back when an account was reinstated, as an instance that did it knows (after a loss) */
  setReinstatedAt?(account: string, at: number): Promise<void>;
  markRestored?(): Promise<void>;
  setOwner(address: string, account: string): Promise<void>;
  /** the address is its own account now, or no account's: it is nobody's alias any more */
  forgetOwner(address: string): Promise<void>;
  /**
   * Whose an address on the never-suspend list is (its own account's, or the one it is an alias of),
   * kept apart from what logins teach (owner): no client can make it forgotten.
   */
  listedOwner(address: string): Promise<string | undefined>;
  setListedOwner(address: string, account: string): Promise<void>;
}

/** How long an address's owner is remembered without being confirmed by the lifecycle API. */
export const OWNER_TTL_MS = 30 * 24 * 3_600_000;

const ADD_STRIKE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local total = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  total = total + tonumber(cjson.decode(m).weight)
end
return tostring(total)`;

// KEYS: the suspension. ARGV: the new one (JSON), its "action":… and "reference":… members as JSON.stringify
// writes them, its time to live in ms ('' for none), '1' to update only the same suspension. Returns the
// one in force afterwards (JSON), or false. The stored JSON is searched, not decoded: a string member
// cannot hold an unescaped quote, so a member is found only where it is one, and cjson (which refuses
// some strings JSON.stringify writes, a lone surrogate) is not in the way.
const SET_SUSPENSION = `
local cur = redis.call('GET', KEYS[1])
local function has(member) return cur and string.find(cur, member, 1, true) ~= nil end
if ARGV[5] == '1' then
  if not (has(ARGV[2]) and has(ARGV[3])) then return cur end
elseif has('"action":"suspend_account"') and ARGV[2] ~= '"action":"suspend_account"' then
  return cur
elseif cur and ARGV[2] == '"action":"suspend_sending"' and has('"action":"suspend_sending"') and ARGV[4] ~= '' then
  -- Sending suspended for longer (or with no end: no time to live) stays as it is. Times to live are
  -- reckoned from when each was sent, so one that ends at the same time may look a few ms longer: a second
  -- of margin.
  local left = redis.call('PTTL', KEYS[1])
  if left == -1 or left > tonumber(ARGV[4]) + 1000 then return cur end
end
if ARGV[4] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4]) else redis.call('SET', KEYS[1], ARGV[1]) end
return ARGV[1]`;

type Scripted = RedisClient & {
  douaneAddStrike(key: string, cutoff: number, at: number, member: string, ttl: number): Promise<string>;
  douaneSetSuspension(key: string, json: string, action: string, reference: string, ttl: string, update: string): Promise<string | null>;
};

/**
 * Whether the suspension in force stays when another is asked for: a lock stays a lock, and sending
 * suspended for longer (or until further notice) is not cut short by a later, shorter one (a ladder step
 * reached by strikes landing late). SET_SUSPENSION does the same in Redis.
 */
export function keepsSuspension(current: Suspension | undefined, asked: Suspension): boolean {
  if (!current) return false;
  if (current.action === 'suspend_account') return asked.action !== 'suspend_account';
  if (asked.action === 'suspend_account' || asked.until === undefined) return false;
  return current.until === undefined || current.until > asked.until;
}

/** What setSuspension does, for the states that keep it in this process. */
function nextSuspension(current: Suspension | undefined, s: Suspension, update: boolean): Suspension | undefined {
  if (update) return current && current.reference === s.reference && current.action === s.action ? s : current;
  return keepsSuspension(current, s) ? current : s;
}

const acct = (a: string) => accountTag(a.toLowerCase());

/** How long a reinstatement is remembered: longer than a strike kept for later waits, or a loss of the state goes unseen. */
const REINSTATED_TTL_MS = 30 * 86_400_000;

export class RedisEnforcementState implements EnforcementState {
  private readonly r: Scripted;

  constructor(
    client: RedisClient,
    private readonly prefix: string,
  ) {
    client.defineCommand('douaneAddStrike', { numberOfKeys: 1, lua: ADD_STRIKE });
    client.defineCommand('douaneSetSuspension', { numberOfKeys: 1, lua: SET_SUSPENSION });
    this.r = client as Scripted;
  }

  private k(kind: string, account: string): string {
    return `${this.prefix}:${kind}:${acct(account)}`;
  }

  /** the state's mark as this process last saw it */
  private mark: string | undefined;

  /** the mark came from an earlier run, not from a look of this one's */
  private seeded = false;
  private fromSeed = false;

  markSeen(): string | undefined {
    return this.mark;
  }

  seedMark(mark: string): void {
    if (this.mark !== undefined) return;
    this.mark = mark;
    this.seeded = true;
  }

  lossFromEarlierRun(): boolean {
    return this.fromSeed;
  }

  async restoredAlready(): Promise<boolean> {
    return this.mark !== undefined && (await this.r.get(`${this.prefix}:state-restored`)) === this.mark;
  }

  async markRestored(): Promise<void> {
    if (this.mark !== undefined) await this.r.set(`${this.prefix}:state-restored`, this.mark);
  }

  async lost(): Promise<boolean> {
    const key = `${this.prefix}:state-mark`;
    let current = await this.r.get(key);
    // No mark: the first start on this Redis, or the state was lost; one is set (another instance may
    // have set one meanwhile: that one stands).
    if (current === null) {
      await this.r.set(key, randomUUID(), 'NX');
      current = await this.r.get(key);
    }
    // A mark other than the one seen before: the state was lost since, whoever set the new one (another
    // instance, or one just started, which knew nothing to write back). Each instance writes back what
    // it knows; reinstatements since are kept apart (reinstatedAt).
    const lost = this.mark !== undefined && current !== this.mark;
    this.fromSeed = lost && this.seeded;
    this.seeded = false;
    this.mark = current ?? undefined;
    return lost;
  }

  async addStrike(account: string, s: StrikeRecord, windowMs: number): Promise<number> {
    return Number(await this.r.douaneAddStrike(this.k('strikes', account), s.at - windowMs, s.at, JSON.stringify(s), windowMs));
  }

  async strikes(account: string, windowMs: number): Promise<StrikeRecord[]> {
    const members = await this.r.zrangebyscore(this.k('strikes', account), Date.now() - windowMs, '+inf');
    return members.map((m) => JSON.parse(m) as StrikeRecord);
  }

  async claim(key: string, ttlMs: number, holder?: string): Promise<boolean> {
    const k = `${this.prefix}:claim:${key}`;
    if ((await this.r.set(k, holder ?? '1', 'PX', Math.max(1, Math.round(ttlMs)), 'NX')) === 'OK') return true;
    return holder !== undefined && (await this.r.get(k)) === holder;
  }

  async holdClaim(key: string, ttlMs: number): Promise<void> {
    // XX: a claim a reinstatement removed meanwhile stays removed, or the step would stay taken for the
    // whole window of an account starting over.
    await this.r.set(`${this.prefix}:claim:${key}`, '1', 'PX', Math.max(1, Math.round(ttlMs)), 'XX');
  }

  async dropClaim(key: string): Promise<void> {
    await this.r.del(`${this.prefix}:claim:${key}`);
  }

  async lockHeld(account: string): Promise<boolean> {
    return (await this.r.exists(this.k('lock-held', account))) === 1;
  }

  async setLockHeld(account: string, held: boolean): Promise<void> {
    if (held) await this.r.set(this.k('lock-held', account), '1');
    else await this.r.del(this.k('lock-held', account));
  }

  async owner(address: string): Promise<string | undefined> {
    return (await this.r.get(this.k('owner', address))) ?? undefined;
  }

  async setOwner(address: string, account: string): Promise<void> {
    await this.r.set(this.k('owner', address), account.toLowerCase(), 'PX', OWNER_TTL_MS);
  }

  async listedOwner(address: string): Promise<string | undefined> {
    return (await this.r.get(this.k('listed', address))) ?? undefined;
  }

  async setListedOwner(address: string, account: string): Promise<void> {
    await this.r.set(this.k('listed', address), account.toLowerCase(), 'PX', OWNER_TTL_MS);
  }

  async forgetOwner(address: string): Promise<void> {
    await this.r.del(this.k('owner', address));
  }

  async resetAccount(account: string): Promise<void> {
    const a = acct(account);
    // Claims (ladder steps, cooldowns) are per account and live under their own prefix.
    // The account name is matched literally: "*", "?" and "[" in it must not reach other accounts' claims.
    // The account's part ends with ":" in a claim key: a_b_@x must not take a{b}@x's ("{a_b_@x}~…:").
    const claims = await this.scanKeys(`${this.prefix}:claim:*${a.replace(/[*?[\]\\]/g, '\\$&')}:*`);
    await this.r.del(this.k('strikes', account), this.k('suspended', account), this.k('throttle', account), this.k('pending', account));
    if (claims.length) for (const c of claims) await this.r.del(c);
    await this.r.srem(`${this.prefix}:suspended-set`, account.toLowerCase());
    await this.r.srem(`${this.prefix}:pending-set`, account.toLowerCase());
    await this.r.set(this.k('reinstated', account), String(Date.now()), 'PX', REINSTATED_TTL_MS);
  }

  async reinstatedAt(account: string): Promise<number | undefined> {
    const at = await this.r.get(this.k('reinstated', account));
    return at === null ? undefined : Number(at);
  }

  async setReinstatedAt(account: string, at: number): Promise<void> {
    const left = at + REINSTATED_TTL_MS - Date.now();
    if (left > 0) await this.r.set(this.k('reinstated', account), String(at), 'PX', left);
  }

  private async scanKeys(pattern: string): Promise<string[]> {
    const out: string[] = [];
    const nodes = 'nodes' in this.r && typeof this.r.nodes === 'function' ? this.r.nodes('master') : [this.r];
    for (const node of nodes as RedisClient[]) {
      let cursor = '0';
      do {
        const [next, keys] = await (node as import('ioredis').Redis).scan(cursor, 'MATCH', pattern, 'COUNT', 500);
        cursor = next;
        out.push(...keys);
      } while (cursor !== '0');
    }
    return out;
  }

  async account(account: string): Promise<AccountState> {
    // One MGET: the three keys share the account's hash tag (one Cluster slot), and this runs at every MAIL FROM.
    const [s, t, p] = await this.r.mget(this.k('suspended', account), this.k('throttle', account), this.k('pending', account));
    const out: AccountState = {};
    if (s) out.suspension = JSON.parse(s) as Suspension;
    if (t) out.throttle = JSON.parse(t) as Throttle;
    if (p) out.pending = JSON.parse(p) as Pending;
    return out;
  }

  async setSuspension(account: string, s: Suspension, opts: { update?: boolean } = {}): Promise<Suspension | undefined> {
    const ttl = s.until ? String(Math.max(1, s.until - Date.now())) : '';
    const member = (name: string, value: string) => `${JSON.stringify(name)}:${JSON.stringify(value)}`;
    // Listed first: a failure between the two must not leave a suspension in force that no list shows.
    // One listed without a suspension is dropped from the list when it is next read (suspendedAccounts).
    await this.r.sadd(`${this.prefix}:suspended-set`, account.toLowerCase());
    const inForce = await this.r.douaneSetSuspension(this.k('suspended', account), JSON.stringify(s), member('action', s.action), member('reference', s.reference), ttl, opts.update ? '1' : '');
    return inForce ? (JSON.parse(inForce) as Suspension) : undefined;
  }

  async setThrottle(account: string, t: Throttle): Promise<void> {
    await this.r.set(this.k('throttle', account), JSON.stringify(t), 'PX', Math.max(1, t.until - Date.now()));
  }

  async setPending(account: string, p: Pending | undefined): Promise<void> {
    if (p) {
      await this.r.set(this.k('pending', account), JSON.stringify(p));
      await this.r.sadd(`${this.prefix}:pending-set`, account.toLowerCase());
    } else {
      await this.r.del(this.k('pending', account));
      await this.r.srem(`${this.prefix}:pending-set`, account.toLowerCase());
    }
  }

  pendingAccounts(): Promise<string[]> {
    return this.r.smembers(`${this.prefix}:pending-set`);
  }

  async suspendedAccounts(): Promise<string[]> {
    const all = await this.r.smembers(`${this.prefix}:suspended-set`);
    const live: string[] = [];
    for (const a of all) {
      // A suspension with an end expires by itself: drop it from the set then.
      if (await this.r.exists(this.k('suspended', a))) live.push(a);
      else await this.r.srem(`${this.prefix}:suspended-set`, a);
    }
    return live;
  }

  async countSuspension(at: number): Promise<number> {
    const key = `${this.prefix}:suspensions-hour`;
    await this.r.zremrangebyscore(key, '-inf', at - 3_600_000);
    await this.r.zadd(key, at, `${at}-${Math.random()}`);
    await this.r.pexpire(key, 3_600_000);
    return this.r.zcard(key);
  }

  async breaker(): Promise<Breaker> {
    const b = await this.r.get(`${this.prefix}:breaker`);
    return b ? (JSON.parse(b) as Breaker) : { open: false };
  }

  async setBreaker(b: Breaker): Promise<void> {
    // Closed by a person: the suspensions counted before (the one held back among them) would open it
    // again at the next one.
    await this.r.set(`${this.prefix}:breaker`, JSON.stringify(b));
    if (!b.open) await this.r.del(`${this.prefix}:suspensions-hour`);
  }
}

export class MemoryEnforcementState implements EnforcementState {
  protected readonly strikeLists = new Map<string, StrikeRecord[]>();
  protected readonly claims = new Map<string, number>();
  /** who took a claim, when it was taken with a holder */
  protected readonly claimHolders = new Map<string, string>();
  /** when each account was last reset (a late strike for it is one from before), for REINSTATED_TTL_MS */
  protected readonly reinstated = new Map<string, number>();
  protected readonly accounts = new Map<string, AccountState>();
  protected suspensionTimes: number[] = [];
  protected breakerState: Breaker = { open: false };
  protected readonly locksHeld = new Set<string>();
  protected readonly owners = new Map<string, { account: string; until: number }>();
  protected readonly listedOwners = new Map<string, { account: string; until: number }>();
  /** the strike window last asked for: strikes older than it no longer count anywhere */
  private strikeWindowMs = 0;
  private prunedAt = 0;

  constructor(protected readonly now: () => number = Date.now) {}

  /**
   * Drops what no longer counts: expired claims, strikes out of the window, accounts with nothing in
   * force. Without it, every made-up login a password sprayer tries would stay for good.
   */
  protected prune(): void {
    const now = this.now();
    this.prunedAt = now;
    for (const [k, until] of this.claims) {
      if (until > now) continue;
      this.claims.delete(k);
      this.claimHolders.delete(k);
    }
    for (const [k, o] of this.owners) if (o.until <= now) this.owners.delete(k);
    for (const [k, o] of this.listedOwners) if (o.until <= now) this.listedOwners.delete(k);
    for (const [a, at] of this.reinstated) if (at <= now - REINSTATED_TTL_MS) this.reinstated.delete(a);
    // Until a strike was recorded since the start, the window is not known: strikes read from the file stay.
    if (this.strikeWindowMs > 0) {
      for (const [a, list] of this.strikeLists) {
        const kept = list.filter((x) => x.at > now - this.strikeWindowMs);
        if (kept.length === 0) this.strikeLists.delete(a);
        else if (kept.length !== list.length) this.strikeLists.set(a, kept);
      }
    }
    for (const [a, s] of this.accounts) {
      const inForce = (s.suspension && (!s.suspension.until || s.suspension.until > now)) || (s.throttle && s.throttle.until > now) || s.pending;
      if (!inForce) this.accounts.delete(a);
    }
  }

  /** In memory, a prune a minute is enough. */
  private pruneNow(): void {
    if (this.now() - this.prunedAt >= 60_000) this.prune();
  }

  async lockHeld(account: string): Promise<boolean> {
    return this.locksHeld.has(account.toLowerCase());
  }

  /** Held in this process (and its file): nothing else can lose it. */
  async lost(): Promise<boolean> {
    return false;
  }

  async owner(address: string): Promise<string | undefined> {
    const o = this.owners.get(address.toLowerCase());
    return o && o.until > this.now() ? o.account : undefined;
  }

  async setOwner(address: string, account: string): Promise<void> {
    this.owners.set(address.toLowerCase(), { account: account.toLowerCase(), until: this.now() + OWNER_TTL_MS });
  }

  async listedOwner(address: string): Promise<string | undefined> {
    const o = this.listedOwners.get(address.toLowerCase());
    return o && o.until > this.now() ? o.account : undefined;
  }

  async setListedOwner(address: string, account: string): Promise<void> {
    this.listedOwners.set(address.toLowerCase(), { account: account.toLowerCase(), until: this.now() + OWNER_TTL_MS });
  }

  async forgetOwner(address: string): Promise<void> {
    this.owners.delete(address.toLowerCase());
  }

  async setLockHeld(account: string, held: boolean): Promise<void> {
    if (held) this.locksHeld.add(account.toLowerCase());
    else this.locksHeld.delete(account.toLowerCase());
  }

  async addStrike(account: string, s: StrikeRecord, windowMs: number): Promise<number> {
    this.strikeWindowMs = windowMs;
    this.pruneNow();
    const list = (this.strikeLists.get(account.toLowerCase()) ?? []).filter((x) => x.at > s.at - windowMs);
    // One strike once, as in Redis (a sorted set): one counted again after a failure is the same strike.
    if (!list.some((x) => x.id === s.id)) list.push(s);
    this.strikeLists.set(account.toLowerCase(), list);
    return list.reduce((a, x) => a + x.weight, 0);
  }

  async strikes(account: string, windowMs: number): Promise<StrikeRecord[]> {
    return (this.strikeLists.get(account.toLowerCase()) ?? []).filter((x) => x.at > this.now() - windowMs);
  }

  async claim(key: string, ttlMs: number, holder?: string): Promise<boolean> {
    this.pruneNow();
    const until = this.claims.get(key);
    if (until !== undefined && until > this.now()) return holder !== undefined && this.claimHolders.get(key) === holder;
    this.claims.set(key, this.now() + ttlMs);
    if (holder !== undefined) this.claimHolders.set(key, holder);
    else this.claimHolders.delete(key);
    return true;
  }

  async holdClaim(key: string, ttlMs: number): Promise<void> {
    const until = this.claims.get(key);
    if (until !== undefined && until > this.now()) this.claims.set(key, this.now() + ttlMs);
  }

  async dropClaim(key: string): Promise<void> {
    this.claims.delete(key);
    this.claimHolders.delete(key);
  }

  async reinstatedAt(account: string): Promise<number | undefined> {
    return this.reinstated.get(account.toLowerCase());
  }

  async resetAccount(account: string): Promise<void> {
    const a = account.toLowerCase();
    this.strikeLists.delete(a);
    this.accounts.delete(a);
    this.reinstated.set(a, this.now());
    const tag = `${acct(account)}:`;
    for (const k of this.claims.keys()) {
      if (!k.includes(tag)) continue;
      this.claims.delete(k);
      this.claimHolders.delete(k);
    }
  }

  async account(account: string): Promise<AccountState> {
    return this.accountNow(account);
  }

  /** Read with no await in between, for changes that depend on it. */
  private accountNow(account: string): AccountState {
    const s = this.accounts.get(account.toLowerCase()) ?? {};
    const now = this.now();
    const out: AccountState = {};
    if (s.suspension && (!s.suspension.until || s.suspension.until > now)) out.suspension = s.suspension;
    if (s.throttle && s.throttle.until > now) out.throttle = s.throttle;
    if (s.pending) out.pending = s.pending;
    return out;
  }

  private entry(account: string): AccountState {
    const a = account.toLowerCase();
    const e = this.accounts.get(a) ?? {};
    this.accounts.set(a, e);
    return e;
  }

  async setSuspension(account: string, s: Suspension, opts: { update?: boolean } = {}): Promise<Suspension | undefined> {
    const current = this.accountNow(account).suspension;
    const next = nextSuspension(current, s, Boolean(opts.update));
    if (next === s) this.entry(account).suspension = s;
    return next;
  }

  async setThrottle(account: string, t: Throttle): Promise<void> {
    this.entry(account).throttle = t;
  }

  async setPending(account: string, p: Pending | undefined): Promise<void> {
    this.entry(account).pending = p;
  }

  async pendingAccounts(): Promise<string[]> {
    return [...this.accounts].filter(([, s]) => s.pending).map(([a]) => a);
  }

  async suspendedAccounts(): Promise<string[]> {
    const out: string[] = [];
    for (const a of this.accounts.keys()) if ((await this.account(a)).suspension) out.push(a);
    return out;
  }

  async countSuspension(at: number): Promise<number> {
    this.suspensionTimes = this.suspensionTimes.filter((t) => t > at - 3_600_000);
    this.suspensionTimes.push(at);
    return this.suspensionTimes.length;
  }

  async breaker(): Promise<Breaker> {
    return this.breakerState;
  }

  async setBreaker(b: Breaker): Promise<void> {
    this.breakerState = b;
    if (!b.open) this.suspensionTimes = [];
  }
}

const EMPTY_SNAPSHOT: Snapshot = { strikes: [], claims: [], accounts: [], suspensionTimes: [], breaker: { open: false } };

interface Snapshot {
  strikes: [string, StrikeRecord[]][];
  claims: [string, number][];
  accounts: [string, AccountState][];
  suspensionTimes: number[];
  breaker: Breaker;
  /** absent in files written before it was kept */
  locksHeld?: string[];
  /** absent in files written before it was kept */
  owners?: [string, { account: string; until: number }][];
  /** absent in files written before it was kept */
  listedOwners?: [string, { account: string; until: number }][];
  /** absent in files written before it was kept */
  claimHolders?: [string, string][];
  /** absent in files written before it was kept */
  reinstated?: [string, number][];
}

/**
 * The one-instance state (no Redis), kept in a file of the state directory as well as in memory, so that
 * a restart does not lift a suspension, forget strikes or close the circuit breaker. Each change rewrites
 * the file (write to a temporary name, then rename: a crash leaves the old file or the new one, whole);
 * changes are rare — a strike, a step, a suspension — so this costs nothing on the mail path.
 */
export class FileEnforcementState extends MemoryEnforcementState {
  constructor(
    private readonly file: string,
    now: () => number = Date.now,
    onUnreadable: (detail: string) => void = () => undefined,
  ) {
    super(now);
    let text: string | undefined;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (text === undefined) {
      this.saved = JSON.stringify(this.snapshot());
      return;
    }
    try {
      this.restore(JSON.parse(text) as Snapshot);
      this.saved = text;
    } catch (err) {
      // Keep the damaged file for a person (the audit trail has every suspension) and start empty.
      const aside = `${file}.unreadable-${Date.now()}`;
      renameSync(file, aside);
      onUnreadable(`${file} could not be read (${(err as Error).message}); kept as ${aside}`);
      this.restore(EMPTY_SNAPSHOT);
      this.saved = JSON.stringify(this.snapshot());
    }
  }

  /** What the file holds now: a change that could not be written is taken back to it. */
  private saved = '';

  private snapshot(): Snapshot {
    return {
      strikes: [...this.strikeLists],
      claims: [...this.claims],
      accounts: [...this.accounts],
      suspensionTimes: this.suspensionTimes,
      breaker: this.breakerState,
      locksHeld: [...this.locksHeld],
      owners: [...this.owners],
      listedOwners: [...this.listedOwners],
      claimHolders: [...this.claimHolders],
      reinstated: [...this.reinstated],
    };
  }

  private restore(snap: Snapshot): void {
    this.strikeLists.clear();
    this.claims.clear();
    this.accounts.clear();
    this.locksHeld.clear();
    this.owners.clear();
    for (const [k, v] of snap.strikes) this.strikeLists.set(k, v);
    for (const [k, v] of snap.claims) this.claims.set(k, v);
    for (const [k, v] of snap.accounts) this.accounts.set(k, v);
    this.suspensionTimes = snap.suspensionTimes;
    this.breakerState = snap.breaker;
    for (const a of snap.locksHeld ?? []) this.locksHeld.add(a);
    for (const [k, v] of snap.owners ?? []) this.owners.set(k, v);
    this.claimHolders.clear();
    this.reinstated.clear();
    this.listedOwners.clear();
    for (const [k, v] of snap.listedOwners ?? []) this.listedOwners.set(k, v);
    for (const [k, v] of snap.claimHolders ?? []) this.claimHolders.set(k, v);
    for (const [k, v] of snap.reinstated ?? []) this.reinstated.set(k, v);
  }

  /**
   * Writes the change just made in memory. If it cannot be written (a full disk), memory is taken back
   * to what the file holds and the error thrown: a suspension in force in this process only would be
   * gone at the next start, and its lifecycle job is dropped with it (see Enforcer.changeThen).
   */
  private save(): void {
    // The file holds what is in force, not its history (the audit trail has that): it stays small.
    this.prune();
    const text = JSON.stringify(this.snapshot());
    try {
      mkdirSync(dirname(this.file), { recursive: true, mode: 0o700 });
      const tmp = `${this.file}.part`;
      // Flushed to the disk before it replaces the old file: after a power cut the file is the old one or
      // the new one, never empty (an empty file would be set aside and every suspension forgotten).
      const fd = openSync(tmp, 'w', 0o600);
      try {
        writeSync(fd, text);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.file);
    } catch (err) {
      this.restore(JSON.parse(this.saved) as Snapshot);
      throw err;
    }
    this.saved = text;
  }

  override async addStrike(account: string, s: StrikeRecord, windowMs: number): Promise<number> {
    const total = await super.addStrike(account, s, windowMs);
    this.save();
    return total;
  }

  override async claim(key: string, ttlMs: number, holder?: string): Promise<boolean> {
    const first = await super.claim(key, ttlMs, holder);
    if (first) this.save();
    return first;
  }

  override async holdClaim(key: string, ttlMs: number): Promise<void> {
    await super.holdClaim(key, ttlMs);
    this.save();
  }

  override async dropClaim(key: string): Promise<void> {
    await super.dropClaim(key);
    this.save();
  }

  override async resetAccount(account: string): Promise<void> {
    await super.resetAccount(account);
    this.save();
  }

  override async setLockHeld(account: string, held: boolean): Promise<void> {
    await super.setLockHeld(account, held);
    this.save();
  }

  override async forgetOwner(address: string): Promise<void> {
    const had = this.owners.has(address.toLowerCase());
    await super.forgetOwner(address);
    if (had) this.save();
  }

  override async setOwner(address: string, account: string): Promise<void> {
    // Written when it changes or a day before it would lapse: confirming it at every login costs nothing then.
    const before = this.owners.get(address.toLowerCase());
    await super.setOwner(address, account);
    if (!before || before.account !== account.toLowerCase() || before.until - this.now() < OWNER_TTL_MS - 86_400_000) this.save();
  }

  override async setListedOwner(address: string, account: string): Promise<void> {
    const before = this.listedOwners.get(address.toLowerCase());
    await super.setListedOwner(address, account);
    if (!before || before.account !== account.toLowerCase() || before.until - this.now() < OWNER_TTL_MS - 86_400_000) this.save();
  }

  override async setSuspension(account: string, s: Suspension, opts: { update?: boolean } = {}): Promise<Suspension | undefined> {
    const inForce = await super.setSuspension(account, s, opts);
    this.save();
    return inForce;
  }

  override async setThrottle(account: string, t: Throttle): Promise<void> {
    await super.setThrottle(account, t);
    this.save();
  }

  override async setPending(account: string, p: Pending | undefined): Promise<void> {
    await super.setPending(account, p);
    this.save();
  }

  override async countSuspension(at: number): Promise<number> {
    const n = await super.countSuspension(at);
    this.save();
    return n;
  }

  override async setBreaker(b: Breaker): Promise<void> {
    await super.setBreaker(b);
    this.save();
  }
}

export function claimKey(kind: string, account: string, detail: string): string {
  return `${kind}:${acct(account)}:${detail}`;
}
