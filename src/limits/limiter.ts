// Per-account sending limits (art. 4.6) and brute-force limits (art. 4.1), on rate-limiter-flexible:
// Redis when configured (exact across instances), in memory otherwise. Semantics, documented in
// policies/README.md ("Limits"):
//  - fixed windows of 1 minute, 1 hour, 1 day, each starting at the account's first counted event;
//  - a message is counted at MAIL FROM, a recipient at RCPT TO, both provisionally: they are given back
//    unless the upstream accepts them (refused by a rule or by the upstream, RSET, client gone);
//  - bytes are reserved at MAIL FROM as SIZE= declares them (concurrent messages cannot all fit in the
//    same remainder), settled to the real size once the upstream accepted the message, given back if not;
//    a message without SIZE= may overshoot by its own size;
//  - a refused attempt does not count.
// All the counters of one phase are sent together (ioredis auto-pipelining: one round trip), and every
// call has a deadline; when Redis fails, an in-process insurance limiter decides (or, by configuration,
// the message is tempfailed) and the failure is logged and counted. A count is given back to the store
// that made it: a count the insurance made during an outage is not taken off Redis once it is back. A
// count Redis makes after the phase stopped waiting for it (a frozen Redis runs what it was sent once it
// thaws) is taken back with the message's other counts when the message is not accepted (late-counts.ts).
// The counters are kept per name and window, not per limit: a reload that changes a limit, or a
// throttle, judges the same counts against the new limit.

import { randomBytes } from 'node:crypto';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { LimitFacts } from '../policy/facts.js';
import type { LimitName, Limits } from '../policy/schema.js';
import { comparableAddress, domainOf } from '../policy/facts.js';
import { accountTag, type RedisClient } from './redis.js';
import { LateCounts, mayRunLate, type Unanswered } from './late-counts.js';
import { InsuredStructures, MemoryStructures, RedisStructures, type Structures } from './structures.js';
import { clientNetwork } from '../validate/net.js';

const MINUTE = 60;
const HOUR = 3600;
const DAY = 86_400;
/**
 * How much longer than the counted window had left, by this process's clock, a Redis key may have left
 * and still be that window: the round trips and clock steps in between. A key for the next window has a
 * whole window left (a minute at least).
 */
const WINDOW_MARGIN_MS = 1000;

export interface LimiterOptions {
  /** absent: in-memory limits (one instance only) */
  redis?: RedisClient;
  keyPrefix: string;
  /** Redis failure: decide with in-process insurance limits, or tempfail the message */
  onFailure: 'insurance' | 'tempfail';
  deadlineMs: number;
  metrics: Metrics;
  log: Logger;
  now?: () => number;
}

interface Consumed {
  limiter: RateLimiterAbstract;
  key: string;
  points: number;
  /** after this time the window has rolled over: a refund would credit the next window */
  windowEndsAt: number;
}

/** What was counted for a message or a recipient, to give back if it is not accepted. */
export interface Grant {
  consumed: Consumed[];
  /** a recipient domain counted for the hour, until that hour's set ends */
  setMember?: { key: string; member: string; windowEndsAt: number; insured?: boolean };
  /** the day's bytes reserved at MAIL FROM (also in `consumed`), settled to the real size on acceptance */
  bytes?: Consumed;
  /** counts sent to Redis without an answer, which it may still make: taken back with the rest */
  late?: Unanswered;
}

/** A windowed counter: in Redis with the insurance beside it, or in memory. */
interface Counter {
  primary: RateLimiterAbstract;
  insurance?: RateLimiterAbstract;
}

/** The counters never refuse by themselves: the limit is compared here, so one counter serves every limit. */
const UNBOUNDED = Number.MAX_SAFE_INTEGER;

export interface Checked {
  facts: LimitFacts;
  grant: Grant;
  /** Redis failed and the configuration says tempfail */
  unavailable?: boolean;
}

export interface AuthLimits {
  failures_per_ip: { limit: number; window: number; block: number };
  failures_per_account: { limit: number; window: number; block: number };
}

export interface Baseline {
  ratio: number;
  current: number;
  usual: number;
}

/** Limit counters are per account; the account is in braces so that a Redis Cluster keeps an account's keys together. */
function accountKey(account: string): string {
  return accountTag(comparableAddress(account));
}

class CountingInsurance extends RateLimiterMemory {
  constructor(
    opts: ConstructorParameters<typeof RateLimiterMemory>[0],
    private readonly used: () => void,
  ) {
    super(opts);
  }
  override consume(...a: Parameters<RateLimiterMemory['consume']>) {
    this.used();
    return super.consume(...a);
  }
  override get(...a: Parameters<RateLimiterMemory['get']>) {
    this.used();
    return super.get(...a);
  }
  override reward(...a: Parameters<RateLimiterMemory['reward']>) {
    this.used();
    return super.reward(...a);
  }
  override delete(...a: Parameters<RateLimiterMemory['delete']>) {
    this.used();
    return super.delete(...a);
  }
}

/** An authenticated session, as registered with the concurrent-sessions limit. */
export interface OpenSession {
  id: string;
  expiresAt: number;
}

/** What the checks need from a limiter; `douane policy explain` answers it from given facts. */
export interface LimiterPort {
  /** MAIL FROM: counts the message; judge() gives the facts against the limits, once a throttle is known. */
  countMessage(account: string, limits: Limits, declaredSize: number | undefined, baseline?: { history: number; minMessages: number }, session?: OpenSession): Promise<MessageCount>;
  checkRecipient(account: string, limits: Limits, recipient: string, acceptedSoFar: number): Promise<Checked>;
  authAttempt(ip: string, account: string, limits: AuthLimits): Promise<AuthAttempt>;
  /** Gives back what a message or recipient counted, because it was not accepted. */
  refund(grant: Grant): Promise<void>;
}

/**
 * A login attempt, counted as a failure before its credentials go upstream: attempts in flight count, on
 * every instance, so that many at once cannot each find the account below its limit. settle() says how it
 * ended; an attempt that succeeded or was never tried gives its count back.
 */
export interface AuthAttempt {
  blocked?: 'ip' | 'account';
  /**
   * Not blocked: more attempts in flight at once than the limit lets fail. Refused for the moment, so that
   * parallel connections cannot try more passwords than the limit; nothing is counted or blocked.
   */
  busy?: boolean;
  retryAfter: number;
  /** the limits could not be read and the policy says not to try logins unchecked */
  unavailable?: boolean;
  /** 'failed': the upstream refused the credentials; returns whether this failure blocked the account */
  settle(outcome: 'succeeded' | 'failed' | 'not_tried'): Promise<{ accountBlockedNow: boolean; failures: number }>;
}

/**
 * What MAIL FROM counted. The counting does not wait for the account's state (its round trip runs at the
 * same time): the counters are the same whatever the limits, and a throttle only lowers the limits they
 * are judged against.
 */
export interface MessageCount {
  grant: Grant;
  judge(limits: Limits): Checked & { baseline?: Baseline };
}

export class Limiter implements LimiterPort {
  private readonly limiters = new Map<string, RateLimiterAbstract>();
  private readonly counters = new Map<string, Counter>();
  /** the in-memory storage of each brute-force limiter, by key prefix (see sharingMemory) */
  private readonly memoryStores = new Map<string, unknown>();
  /**
   * Marks must not collide between the instances sharing a Redis: a random prefix per process, then a
   * counter (random bytes for every phase cost a system call each).
   */
  private readonly markerPrefix = randomBytes(9).toString('base64url');
  private markers = 0;
  private readonly structures: Structures;
  /** the insurance's own sets, for giving back what it counted (not Redis, which did not) */
  private readonly insuranceStructures?: MemoryStructures;
  private readonly redisStructures?: RedisStructures;
  private readonly late?: LateCounts;
  private readonly now: () => number;
  private insuranceUses = 0;

  constructor(private readonly opts: LimiterOptions) {
    this.now = opts.now ?? Date.now;
    if (opts.redis) this.redisStructures = new RedisStructures(opts.redis);
    if (!this.redisStructures) this.structures = new MemoryStructures(this.now);
    else if (opts.onFailure === 'insurance') {
      this.insuranceStructures = new MemoryStructures(this.now);
      this.structures = new InsuredStructures(this.redisStructures, this.insuranceStructures, (op, err) => this.failed(op, err));
    } else this.structures = this.redisStructures;
    if (opts.redis) this.late = new LateCounts(opts.redis, opts.log, this.now);
    // rate-limiter-flexible defines its Lua command on the client when a RateLimiterRedis is made. Made
    // lazily, at a first count, it can come while an auto-pipeline opened by another command waits: that
    // pipeline lacks the command, and ioredis then answers its commands out of step and throws where
    // nothing can catch it (the process exits). So one is made now, before any command is sent.
    if (opts.redis) new RateLimiterRedis({ storeClient: opts.redis, keyPrefix: `${opts.keyPrefix}:define`, points: 1, duration: 1 });
  }

  get distributed(): boolean {
    return Boolean(this.opts.redis);
  }

  private failed(op: string, err: Error): void {
    this.insuranceUses++;
    this.opts.metrics.limiterInsurance.labels(op).inc();
    this.opts.metrics.redisErrors.labels('command').inc();
    this.opts.log.warn({ event: 'limiter_insurance', op, err: err.message }, 'Redis failed; the in-process insurance decided');
  }

  private counter(name: string, duration: number): Counter {
    const id = `${name}:${duration}`;
    let c = this.counters.get(id);
    if (c) return c;
    const base = { keyPrefix: `${this.opts.keyPrefix}:${name}`, points: UNBOUNDED, duration };
    if (!this.opts.redis) c = { primary: new RateLimiterMemory(base) };
    else c = { primary: new RateLimiterRedis({ ...base, storeClient: this.opts.redis }), insurance: this.opts.onFailure === 'insurance' ? new RateLimiterMemory(base) : undefined };
    this.counters.set(id, c);
    return c;
  }

  /**
   * A reload that changes a brute-force limit makes a new limiter: in memory, it takes over the counts
   * and blocks of the one before (Redis keeps them under the same keys), or tightening the limits during
   * an attack would unblock the attacker. rate-limiter-flexible keeps a memory limiter's counts in its
   * _memoryStorage; the test of this behaviour fails should that change.
   */
  private sharingMemory<T extends RateLimiterMemory>(keyPrefix: string, limiter: T): T {
    const own = limiter as unknown as { _memoryStorage?: unknown };
    const shared = this.memoryStores.get(keyPrefix);
    if (shared !== undefined && own._memoryStorage !== undefined) own._memoryStorage = shared;
    else this.memoryStores.set(keyPrefix, own._memoryStorage);
    return limiter;
  }

  /**
   * Runs `call` on Redis, or on the insurance when Redis fails; says which store answered, and whether
   * Redis may still run the call it did not answer.
   */
  private async onStore<T>(counter: Counter, name: string, call: (l: RateLimiterAbstract) => Promise<T>): Promise<{ value: T; store: RateLimiterAbstract; mayRunLate?: boolean }> {
    try {
      return { value: await call(counter.primary), store: counter.primary };
    } catch (err) {
      if (!counter.insurance || err instanceof RateLimiterRes) throw err;
      this.failed(name, err as Error);
      return { value: await call(counter.insurance), store: counter.insurance, mayRunLate: mayRunLate(err) };
    }
  }

  /** Gives points back to the store that counted them, and in Redis only to the window they were counted in. */
  private giveBack(c: Consumed, points: number, now: number): Promise<unknown> {
    if (this.redisStructures && c.limiter instanceof RateLimiterRedis) return this.redisStructures.takeBack(c.limiter.getKey(c.key), points, c.windowEndsAt - now + WINDOW_MARGIN_MS);
    return c.limiter.reward(c.key, points);
  }

  /** The Redis key a counter keeps an account's count under. */
  private counterKey(name: string, duration: number, key: string): string {
    return this.counter(name, duration).primary.getKey(key);
  }

  /** A phase's mark (late-counts.ts), in the account's hash slot. */
  private markerFor(key: string): string {
    return `${this.opts.keyPrefix}:late:${key}:${this.markerPrefix}${(this.markers++).toString(36)}`;
  }

  /** What Redis may still count of a phase it did not answer: all of it, or the counters the insurance answered. */
  private unanswered(marker: string, all: string[], answered?: { late?: string }[]): Unanswered | undefined {
    if (!this.late) return undefined;
    const keys = answered ? answered.flatMap((r) => (r.late ? [r.late] : [])) : all;
    return keys.length ? { marker, keys } : undefined;
  }

  /** A fixed-window counter (the brute-force blocks are records of their own: see authAttempt). */
  private limiter(name: string, points: number, duration: number): RateLimiterAbstract {
    const id = `${name}:${points}:${duration}`;
    let l = this.limiters.get(id);
    if (l) return l;
    const keyPrefix = `${this.opts.keyPrefix}:${name}`;
    const base = { keyPrefix, points, duration };
    if (!this.opts.redis) l = this.sharingMemory(keyPrefix, new RateLimiterMemory(base));
    else {
      const insurance =
        this.opts.onFailure === 'insurance'
          ? this.sharingMemory(
              keyPrefix,
              new CountingInsurance(base, () => {
                this.insuranceUses++;
                this.opts.metrics.limiterInsurance.labels(name).inc();
                this.opts.metrics.redisErrors.labels('command').inc();
              }),
            )
          : undefined;
      l = new RateLimiterRedis({ ...base, storeClient: this.opts.redis, insuranceLimiter: insurance });
    }
    this.limiters.set(id, l);
    return l;
  }

  /** Runs a phase's Redis work within the deadline; reports whether the insurance answered. */
  private async decide<T>(what: string, work: () => Promise<T>): Promise<{ value?: T; degraded: boolean; failed?: Error }> {
    const before = this.insuranceUses;
    let timer: NodeJS.Timeout | undefined;
    // Made only when the deadline passes: an Error captures a stack, which every phase would pay for.
    let passed: Error | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject((passed = new Error(`no decision within ${this.opts.deadlineMs} ms`))), this.opts.deadlineMs);
    });
    try {
      const value = await Promise.race([work(), deadline]);
      const degraded = this.insuranceUses !== before;
      if (degraded) this.opts.log.info({ event: 'limits_degraded', what }, 'limits decided by the in-process insurance');
      return { value, degraded };
    } catch (err) {
      // A slow Redis is not a refusing one (closed, READONLY, out of memory): the alert reads the kind.
      this.opts.metrics.redisErrors.labels(err === passed ? 'deadline' : 'command').inc();
      this.opts.log.warn({ event: 'limits_failed', what, err: (err as Error).message }, `limits could not be decided (${this.opts.onFailure})`);
      return { degraded: true, failed: err as Error };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Counts `amount`; `late` names the Redis key when the insurance answered and Redis may still count it. */
  private async consume(name: LimitName | string, limit: number, duration: number, key: string, amount = 1, record = true): Promise<{ res: RateLimiterRes; over: boolean; c: Consumed; late?: string }> {
    const counter = this.counter(name, duration);
    const { value: res, store, mayRunLate } = await this.onStore(counter, name, (l) => l.consume(key, amount));
    const over = res.consumedPoints > limit;
    if (record) this.opts.metrics.limiterDecisions.labels(name, over ? 'exceeded' : 'ok').inc();
    return { res, over, c: { limiter: store, key, points: amount, windowEndsAt: this.now() + res.msBeforeNext }, late: mayRunLate ? counter.primary.getKey(key) : undefined };
  }

  /** MAIL FROM: message counters, the day's bytes, open sessions, and the account's usual volume. */
  async countMessage(account: string, limits: Limits, declaredSize: number | undefined, baseline?: { history: number; minMessages: number }, session?: OpenSession): Promise<MessageCount> {
    const key = accountKey(account);
    const now = this.now();
    const reserved = Math.max(1, declaredSize ?? 1);
    const counted = [
      { key: this.counterKey('messages_per_minute', MINUTE, key), points: 1 },
      { key: this.counterKey('messages_per_hour', HOUR, key), points: 1 },
      { key: this.counterKey('messages_per_day', DAY, key), points: 1 },
      { key: this.counterKey('bytes_per_day', DAY, key), points: reserved },
    ];
    const marker = this.markerFor(key);
    const outcome = await this.decide('message', async () => {
      const counts = Promise.all([
        this.consume('messages_per_minute', limits.messages_per_minute, MINUTE, key, 1, false),
        this.consume('messages_per_hour', limits.messages_per_hour, HOUR, key, 1, false),
        this.consume('messages_per_day', limits.messages_per_day, DAY, key, 1, false),
        this.consume('bytes_per_day', limits.bytes_per_day, DAY, key, reserved, false),
      ]);
      // The mark goes with the history's read, sent after the counts; without one, on its own.
      const mark = this.late ? { marker, counted } : undefined;
      if (mark && !baseline) this.late!.mark(marker, counted);
      const [[m, h, d, bytes], sessions, hist] = await Promise.all([
        counts,
        session ? this.structures.sessionRank(`${this.opts.keyPrefix}:sessions:${key}`, session.id, session.expiresAt, now) : Promise.resolve({ count: 0, rank: null }),
        baseline ? this.structures.hours(`${this.opts.keyPrefix}:hourly:${key}`, hoursBack(now, baseline.history), mark) : Promise.resolve(undefined),
      ]);
      return { m, h, d, bytes, sessions, hist };
    });
    if (!outcome.value) {
      const undecided = this.undecided(this.unanswered(marker, counted.map((c) => c.key)));
      return { grant: undecided.grant, judge: () => undecided };
    }
    const { m, h, d, bytes, sessions, hist } = outcome.value;
    const grant: Grant = { consumed: [m.c, h.c, d.c, bytes.c], bytes: bytes.c, late: this.unanswered(marker, [], [m, h, d, bytes]) };
    const judge = (lim: Limits): Checked & { baseline?: Baseline } => {
      const facts: LimitFacts = { exceeded: [], usage: {}, degraded: outcome.degraded };
      const waits: number[] = [];
      for (const [name, r] of [['messages_per_minute', m], ['messages_per_hour', h], ['messages_per_day', d]] as const) {
        facts.usage[name] = r.res.consumedPoints;
        const over = r.res.consumedPoints > lim[name];
        this.opts.metrics.limiterDecisions.labels(name, over ? 'exceeded' : 'ok').inc();
        if (over) {
          facts.exceeded.push(name);
          waits.push(r.res.msBeforeNext);
        }
      }
      // With this message's reservation (its SIZE=, or 1 byte when it declared none).
      facts.usage.bytes_per_day = bytes.res.consumedPoints;
      if (bytes.res.consumedPoints > lim.bytes_per_day) {
        facts.exceeded.push('bytes_per_day');
        waits.push(bytes.res.msBeforeNext);
      }
      this.opts.metrics.limiterDecisions.labels('bytes_per_day', facts.exceeded.includes('bytes_per_day') ? 'exceeded' : 'ok').inc();
      // The oldest sessions keep their place: the ones opened past the limit are refused.
      facts.usage.concurrent_sessions = sessions.count;
      const tooMany = sessions.rank !== null && sessions.rank >= lim.concurrent_sessions;
      if (tooMany) {
        facts.exceeded.push('concurrent_sessions');
        waits.push(60_000);
      }
      this.opts.metrics.limiterDecisions.labels('concurrent_sessions', tooMany ? 'exceeded' : 'ok').inc();
      if (waits.length) facts.retryAfter = Math.ceil(Math.max(...waits) / 1000);
      const result: Checked & { baseline?: Baseline } = { facts, grant };
      if (hist && baseline) result.baseline = computeBaseline(hist, baseline.minMessages);
      return result;
    };
    return { grant, judge };
  }

  /** RCPT TO: recipients in this message, per hour and per day, distinct domains per hour. */
  async checkRecipient(account: string, limits: Limits, recipient: string, acceptedSoFar: number): Promise<Checked> {
    const key = accountKey(account);
    const domain = domainOf(recipient) || recipient.toLowerCase();
    const domainsKey = `${this.opts.keyPrefix}:domain-uses:${key}`;
    const counted = [
      { key: this.counterKey('recipients_per_hour', HOUR, key), points: 1 },
      { key: this.counterKey('recipients_per_day', DAY, key), points: 1 },
    ];
    const marker = this.markerFor(key);
    const outcome = await this.decide('recipient', () => {
      const all = Promise.all([
        this.consume('recipients_per_hour', limits.recipients_per_hour, HOUR, key),
        this.consume('recipients_per_day', limits.recipients_per_day, DAY, key),
        // The mark goes with the domain's script, sent after the counts.
        this.structures.setAdd(domainsKey, domain, limits.recipient_domains_per_hour, HOUR * 1000, this.late ? { marker, counted } : undefined),
      ]);
      return all;
    });
    if (!outcome.value) return this.undecided(this.unanswered(marker, [...counted.map((c) => c.key), domainsKey]));
    const [h, d, domains] = outcome.value;
    const facts: LimitFacts = { exceeded: [], usage: {}, degraded: outcome.degraded };
    const waits: number[] = [];
    if (acceptedSoFar >= limits.recipients_per_message) facts.exceeded.push('recipients_per_message');
    facts.usage.recipients_per_message = acceptedSoFar + 1;
    this.opts.metrics.limiterDecisions.labels('recipients_per_message', acceptedSoFar >= limits.recipients_per_message ? 'exceeded' : 'ok').inc();
    for (const [name, r] of [['recipients_per_hour', h], ['recipients_per_day', d]] as const) {
      facts.usage[name] = r.res.consumedPoints;
      if (r.over) {
        facts.exceeded.push(name);
        waits.push(r.res.msBeforeNext);
      }
    }
    facts.usage.recipient_domains_per_hour = domains.count;
    if (domains.exceeded) {
      facts.exceeded.push('recipient_domains_per_hour');
      waits.push(domains.ttlMs);
    }
    this.opts.metrics.limiterDecisions.labels('recipient_domains_per_hour', domains.exceeded ? 'exceeded' : 'ok').inc();
    if (waits.length) facts.retryAfter = Math.ceil(Math.max(...waits) / 1000);
    const grant: Grant = { consumed: [h.c, d.c], late: this.unanswered(marker, [], [h, d, { late: domains.mayRunLate ? domainsKey : undefined }]) };
    if (domains.added) grant.setMember = { key: domainsKey, member: domain, windowEndsAt: this.now() + domains.ttlMs, insured: domains.insured };
    return { facts, grant };
  }

  private undecided(late?: Unanswered): Checked {
    // With insurance this only happens past the deadline: fail open, visibly (degraded). Else tempfail.
    const facts: LimitFacts = { exceeded: [], usage: {}, degraded: true };
    return { facts, grant: { consumed: [], late }, unavailable: this.opts.onFailure === 'tempfail' };
  }

  /** Gives back what a message or recipient counted, because it was not accepted. */
  async refund(grant: Grant): Promise<void> {
    const now = this.now();
    // Each count goes back to the store that made it. One that Redis made and cannot take back now (it
    // is down) stays counted: the account loses that much of its allowance, it never gains any.
    const rewards = grant.consumed.filter((c) => now < c.windowEndsAt).map((c) => this.giveBack(c, c.points, now));
    // What Redis counted without answering is taken back there once it answers, in its own window.
    if (grant.late) this.late?.cancel(grant.late);
    await this.decide('refund', async () => {
      // A domain given back after its hour ended would come off the next hour's set, where another message may use it.
      const member = grant.setMember && now < grant.setMember.windowEndsAt ? grant.setMember : undefined;
      const sets = member?.insured ? this.insuranceStructures! : this.structures;
      const settled = await Promise.allSettled([...rewards, member ? sets.setRemove(member.key, member.member, member.windowEndsAt - now + WINDOW_MARGIN_MS) : Promise.resolve()]);
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    });
    grant.consumed = [];
    grant.setMember = undefined;
    grant.bytes = undefined;
    grant.late = undefined;
  }

  /** The upstream accepted a message: settle its bytes to its real size, count its hour in the history. */
  async accepted(account: string, limits: Limits, size: number, historyHours: number, grant?: Grant): Promise<void> {
    const key = accountKey(account);
    const reserved = grant?.bytes;
    const more = Math.max(1, size) - (reserved?.points ?? 0);
    await this.decide('accepted', () =>
      Promise.all([
        // Settling, not deciding: the decision was counted at MAIL FROM.
        more > 0 ? this.consume('bytes_per_day', limits.bytes_per_day, DAY, key, more, false) : reserved && more < 0 && this.now() < reserved.windowEndsAt ? this.giveBack(reserved, -more, this.now()) : Promise.resolve(),
        this.structures.hourIncr(`${this.opts.keyPrefix}:hourly:${key}`, Math.floor(this.now() / 3_600_000), historyHours + 1),
      ]),
    );
  }

  async sessionOpened(account: string, id: string, expiresAt: number): Promise<void> {
    await this.decide('session', () => this.structures.sessionOpen(`${this.opts.keyPrefix}:sessions:${accountKey(account)}`, id, expiresAt, this.now()));
  }

  async sessionClosed(account: string, id: string): Promise<void> {
    await this.decide('session', () => this.structures.sessionClose(`${this.opts.keyPrefix}:sessions:${accountKey(account)}`, id));
  }

  /**
   * Before trying credentials: takes the attempt's point from the address and from the account, and says
   * whether either is blocked. A limit of N lets N + 1 failures through before the block, as a check of
   * earlier failures alone would; but the attempts in flight are among them. Past it, an attempt is
   * refused: blocked if the failures already counted are past the limit, and if only the attempts in
   * flight are (20 sessions of one account logging in at once, none failing), busy: it may try again in
   * a moment, and blocks nothing. The attempts in flight are counted apart, to tell the two.
   *
   * The failures are counted in plain fixed windows; a block is a record of its own, started by a failure
   * that takes the count past the limit (never by a login that worked, which would otherwise restart the
   * window's clock and keep a guesser's failures alive for the holder's every login). Blocked: while the
   * record lasts, and while the window's failures are over the limit (a limit lowered by a reload).
   */
  async authAttempt(address: string, account: string, limits: AuthLimits): Promise<AuthAttempt> {
    const { failures_per_ip: pi, failures_per_account: pa } = limits;
    const ip = clientNetwork(address);
    const ipLimiter = this.limiter('auth_ip', pi.limit, pi.window / 1000);
    const accountLimiter = this.limiter('auth_account', pa.limit, pa.window / 1000);
    const ipBlock = this.limiter('auth_ip_block', 1, (pi.block || pi.window) / 1000);
    const accountBlock = this.limiter('auth_account_block', 1, (pa.block || pa.window) / 1000);
    // Counters only (their limit is never reached): the attempts not settled yet, in the same windows.
    const ipFlying = this.limiter('auth_ip_inflight', Number.MAX_SAFE_INTEGER, pi.window / 1000);
    const accountFlying = this.limiter('auth_account_inflight', Number.MAX_SAFE_INTEGER, pa.window / 1000);
    const key = accountKey(account);
    const settleRes = (p: Promise<RateLimiterRes>) => p.catch((e: unknown) => (e instanceof RateLimiterRes ? e : Promise.reject(e)));
    const outcome = await this.decide('auth', () =>
      Promise.all([settleRes(ipLimiter.consume(ip)), settleRes(accountLimiter.consume(key)), ipBlock.get(ip), accountBlock.get(key), settleRes(ipFlying.consume(ip)), settleRes(accountFlying.consume(key))]),
    );
    const none = { accountBlockedNow: false, failures: 0 };
    // Not known: with insurance this only happens past the deadline (fail open, logged); in tempfail
    // mode, a login is not tried unchecked any more than a message is sent unchecked.
    if (!outcome.value) return { retryAfter: 0, unavailable: this.opts.onFailure === 'tempfail', settle: async () => none };
    const [ipRes, acctRes, ipBlocked, accountBlocked, ipInFlight, accountInFlight] = outcome.value;
    // A point is given back only within the window it was counted in: after it, it would credit the next
    // (a reward on a key gone makes one of -1 for a whole window). Not in the window's last moment either,
    // which the store's clock may already have passed; the point then goes with the window.
    const countedAt = this.now() - REWARD_MARGIN_MS;
    const ipWindowEnds = countedAt + ipRes.msBeforeNext;
    const accountWindowEnds = countedAt + acctRes.msBeforeNext;
    const ipFlyingEnds = countedAt + ipInFlight.msBeforeNext;
    const accountFlyingEnds = countedAt + accountInFlight.msBeforeNext;
    /** Gives this attempt's point back to each counter whose window it was counted in has not ended; once. */
    const returning = (counters: [RateLimiterAbstract, string, number][]) => {
      let done = false;
      return async () => {
        if (done) return;
        done = true;
        const now = this.now();
        await this.decide('auth', () => Promise.all(counters.map(([limiter, k, windowEnds]) => (now < windowEnds ? limiter.reward(k, 1) : undefined))));
      };
    };
    /** The attempt is no longer in flight, whatever its outcome. */
    const land = returning([[ipFlying, ip, ipFlyingEnds], [accountFlying, key, accountFlyingEnds]]);
    const giveBack = returning([[ipLimiter, ip, ipWindowEnds], [accountLimiter, key, accountWindowEnds]]);
    /**
     * Blocked (for how long), busy, or free to try. Over the limit with no block, by failures already
     * counted (the limit was lowered by a reload since those failures): blocked from now.
     */
    const judge = async (block: RateLimiterRes | null, counted: RateLimiterRes, flying: RateLimiterRes, limit: number, start: () => Promise<RateLimiterRes>): Promise<number | 'busy' | undefined> => {
      if (block && block.consumedPoints > 0) return block.msBeforeNext;
      if (counted.consumedPoints - 1 <= limit) return undefined;
      if (settledFailures(counted, flying) <= limit) return 'busy';
      return (await this.decide('auth', () => settleRes(start()))).value?.msBeforeNext ?? counted.msBeforeNext;
    };
    const ipWait = await judge(ipBlocked, ipRes, ipInFlight, pi.limit, () => ipBlock.consume(ip));
    const accountWait = await judge(accountBlocked, acctRes, accountInFlight, pa.limit, () => accountBlock.consume(key));
    if (ipWait !== undefined || accountWait !== undefined) {
      // Never tried: it counts against neither, so that retries refused for a blocked account do not block
      // an address (an office behind one address) for the other accounts, nor lengthen the block. Its
      // point first: landed with its point still counted, it would look like a failure to the others.
      await giveBack();
      await land();
      const wait = typeof ipWait === 'number' ? ipWait : typeof accountWait === 'number' ? accountWait : undefined;
      const blocked = typeof ipWait === 'number' || (wait === undefined && ipWait === 'busy') ? 'ip' : 'account';
      if (wait === undefined) return { blocked, busy: true, retryAfter: 1, settle: async () => none };
      return { blocked, retryAfter: Math.ceil(wait / 1000), settle: async () => none };
    }
    return {
      retryAfter: 0,
      settle: async (how) => {
        if (how === 'failed') {
          await land();
          // Blocked now if the failures settled, read after this one, are past the limit: not the attempts
          // still in flight around it (a phone with an old password among the holder's other logins). Other
          // attempts settle around it (and some give their point back), so of the failures that see it,
          // the first to claim the block says so, once per block.
          const now = await this.decide('auth', () => Promise.all([ipLimiter.get(ip), accountLimiter.get(key), ipFlying.get(ip), accountFlying.get(key)]));
          const [ipNow, accountNow, ipFlyingNow, accountFlyingNow] = now.value ?? [undefined, undefined, undefined, undefined];
          const ipFailures = ipNow ? settledFailures(ipNow, ipFlyingNow) : ipRes.consumedPoints;
          if (ipFailures > pi.limit) await this.decide('auth', () => settleRes(ipBlock.consume(ip)));
          const failures = accountNow ? settledFailures(accountNow, accountFlyingNow) : acctRes.consumedPoints;
          if (failures <= pa.limit) return { accountBlockedNow: false, failures };
          // The block (which an attempt refused meanwhile may have started), then the claim to say so.
          const blockSeconds = (pa.block || pa.window) / 1000;
          const [, first] = (await this.decide('auth', () => Promise.all([settleRes(accountBlock.consume(key)), settleRes(this.limiter('auth_blocked', 1, blockSeconds).consume(key))]))).value ?? [];
          return { accountBlockedNow: first?.consumedPoints === 1, failures };
        }
        // A login that worked, or was never tried, was no failure: its own point is given back, and only
        // that. The failures counted around it stand: clearing them would hand whoever is guessing the
        // password a fresh set of tries at each of the holder's logins. The point before it lands (above).
        await giveBack();
        await land();
        return none;
      },
    };
  }
}

/** How long before a window's end a point is no longer given back (see authAttempt). */
const REWARD_MARGIN_MS = 250;

/** The failures counted that are not attempts still in flight (a count in flight below zero is none). */
function settledFailures(counted: RateLimiterRes, flying: RateLimiterRes | null | undefined): number {
  return counted.consumedPoints - Math.max(0, flying?.consumedPoints ?? 0);
}

function hoursBack(now: number, history: number): number[] {
  const current = Math.floor(now / 3_600_000);
  return Array.from({ length: history + 1 }, (_, i) => current - i);
}

/**
 * The account's usual hourly volume is the mean of its active hours (hours with at least one message) in
 * the history; idle hours do not dilute it, so an account that sends in bursts is compared with its bursts.
 */
export function computeBaseline(counts: number[], minMessages: number): Baseline | undefined {
  const [currentSoFar = 0, ...past] = counts;
  const active = past.filter((n) => n > 0);
  const total = active.reduce((a, b) => a + b, 0);
  if (total < minMessages || active.length === 0) return undefined;
  const usual = total / active.length;
  const current = currentSoFar + 1;
  return { ratio: Math.round((current / usual) * 100) / 100, current, usual: Math.round(usual * 100) / 100 };
}
