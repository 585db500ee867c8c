// The in-memory limiter (no Redis: one instance): counts are kept per account and window, whatever the
// limit they are judged against, so a reload that changes a limit, or a throttle, does not reset them.

import { describe, expect, it } from 'vitest';
import { Limiter, type AuthLimits } from '../../src/limits/limiter.js';
import { throttled } from '../../src/limits/throttle.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { clientNetwork } from '../../src/validate/net.js';
import { loadPolicy } from '../../src/policy/load.js';

const base = loadPolicy('fixtures/policies/small-limits').account('roomy@example.test').limits;

function limiter(now: () => number = Date.now) {
  return new Limiter({ keyPrefix: 'douane', onFailure: 'insurance', deadlineMs: 500, metrics: new Metrics({ version: 't', defaultMetrics: false }), log: createLogger({ level: 'silent' }), now });
}

/** Failed logins one after another until the account is blocked: how many were tried, and which said so. */
async function failUntilBlocked(l: Limiter, ip: string, account: string, limits: AuthLimits): Promise<{ tried: number; blockedNow: boolean[] }> {
  const blockedNow: boolean[] = [];
  for (let i = 0; i < 10; i++) {
    const a = await l.authAttempt(ip, account, limits);
    if (a.blocked) break;
    blockedNow.push((await a.settle('failed')).accountBlockedNow);
  }
  return { tried: blockedNow.length, blockedNow };
}

describe('in-memory limits', () => {
  it('a lowered limit judges the counts made under the old one (a policy reload)', async () => {
    const l = limiter();
    const five = { ...base, messages_per_hour: 5 };
    for (let i = 0; i < 5; i++) expect((await l.countMessage('a@x.test', five, undefined)).judge(five).facts.exceeded).toEqual([]);
    const three = { ...base, messages_per_hour: 3 };
    const sixth = (await l.countMessage('a@x.test', three, undefined)).judge(three);
    expect(sixth.facts.exceeded).toEqual(['messages_per_hour']);
    expect(sixth.facts.usage.messages_per_hour).toBe(6);
  });

  it('the usual-volume history of an account idle for its whole history is dropped, as Redis lets it expire', async () => {
    let t = Date.parse('2026-11-02T08:00:00Z');
    const { MemoryStructures } = await import('../../src/limits/structures.js');
    const sets = new MemoryStructures(() => t);
    const hour = () => Math.floor(t / 3_600_000);
    for (let i = 0; i < 1000; i++) await sets.hourIncr(`sender${i}@x.test`, hour(), 24);
    expect(sets.historyKept).toBe(1000);
    t += 23 * 3_600_000; // within the history: kept
    await sets.hourIncr('other@x.test', hour(), 24);
    expect(sets.historyKept).toBe(1001);
    expect(await sets.hours('sender1@x.test', [hour() - 23])).toEqual([1]);
    t += 2 * 3_600_000; // past it
    await sets.hourIncr('other@x.test', hour(), 24);
    expect(sets.historyKept).toBe(1);
    expect(await sets.hours('other@x.test', [hour() - 2, hour()])).toEqual([1, 1]);
  });

  it('a recipient domain given back after its hour ended stays counted in the next hour', async () => {
    let t = Date.parse('2026-11-02T08:00:00Z');
    const l = limiter(() => t);
    const two = { ...base, recipient_domains_per_hour: 2 };
    const a = await l.checkRecipient('c@x.test', two, 'a@one.test', 0); // a transaction left open
    t += 3_601_000;
    expect((await l.checkRecipient('c@x.test', two, 'b@one.test', 0)).facts.exceeded).toEqual([]); // the next hour's
    await l.refund(a.grant); // the first transaction is abandoned, late
    expect((await l.checkRecipient('c@x.test', two, 'c@two.test', 0)).facts.exceeded).toEqual([]);
    expect((await l.checkRecipient('c@x.test', two, 'd@three.test', 0)).facts.exceeded).toEqual(['recipient_domains_per_hour']);
  });

  it('a throttle lowers the recipient limits against the same counts', async () => {
    const l = limiter();
    const ten = { ...base, recipients_per_hour: 10 };
    for (let i = 0; i < 10; i++) expect((await l.checkRecipient('b@x.test', ten, `r${i}@y.test`, 0)).facts.exceeded).toEqual([]);
    const halved = throttled(ten, 0.5);
    expect((await l.checkRecipient('b@x.test', halved, 'r10@y.test', 0)).facts.exceeded).toEqual(['recipients_per_hour']);
  });

  it('a reload that changes the login limits keeps the failures counted and the blocks made', async () => {
    const l = limiter();
    const limits = (limit: number) => ({ failures_per_ip: { limit: 100, window: 60_000, block: 0 }, failures_per_account: { limit, window: 60_000, block: 600_000 } });
    expect((await failUntilBlocked(l, '192.0.2.1', 'victim@x.test', limits(3))).tried).toBe(4);
    // Tightened during the attack: still blocked, and another account's failures still count.
    expect((await l.authAttempt('192.0.2.1', 'victim@x.test', limits(2))).blocked).toBe('account');
    await (await l.authAttempt('192.0.2.1', 'other@x.test', limits(3))).settle('failed');
    await (await l.authAttempt('192.0.2.1', 'other@x.test', limits(3))).settle('failed');
    expect((await failUntilBlocked(l, '192.0.2.1', 'other@x.test', limits(2))).tried).toBe(1);
  });

  it('a login attempt given back after its window ended credits nothing to the next window', async () => {
    const l = limiter();
    const limits = { failures_per_ip: { limit: 100, window: 1000, block: 0 }, failures_per_account: { limit: 2, window: 1000, block: 0 } };
    const late = await l.authAttempt('192.0.2.1', 'victim@x.test', limits);
    await new Promise((r) => setTimeout(r, 1100));
    await late.settle('not_tried');
    // A limit of 2 lets three failures through, then blocks: not four.
    expect((await failUntilBlocked(l, '192.0.2.1', 'victim@x.test', limits)).tried).toBe(3);
  });

  it('a login that works while failures are in flight clears nothing: they count, and the block comes at the limit, once', async () => {
    const l = limiter();
    const limits = { failures_per_ip: { limit: 100, window: 60_000, block: 0 }, failures_per_account: { limit: 3, window: 60_000, block: 60_000 } };
    const a1 = await l.authAttempt('198.51.100.1', 'v@x.test', limits);
    const a2 = await l.authAttempt('198.51.100.1', 'v@x.test', limits);
    const owner = await l.authAttempt('203.0.113.5', 'v@x.test', limits);
    const a3 = await l.authAttempt('198.51.100.1', 'v@x.test', limits);
    await owner.settle('succeeded');
    for (const a of [a1, a2, a3]) expect((await a.settle('failed')).accountBlockedNow).toBe(false);
    // Three failures stand (limit 3): one more try, whose failure blocks the account, and says so once.
    const { tried, blockedNow } = await failUntilBlocked(l, '198.51.100.1', 'v@x.test', limits);
    expect(tried).toBe(1);
    expect(blockedNow).toEqual([true]);
  });

  it('a login that works at the limit starts no block: a guesser\'s failures still end with their window', async () => {
    const l = limiter();
    const limits = { failures_per_ip: { limit: 100, window: 60_000, block: 0 }, failures_per_account: { limit: 3, window: 1000, block: 60_000 } };
    for (let i = 0; i < 3; i++) await (await l.authAttempt('198.51.100.9', 'v@x.test', limits)).settle('failed');
    // The holder logs in (its attempt is the fourth in the window) and gets in.
    const holder = await l.authAttempt('203.0.113.5', 'v@x.test', limits);
    expect(holder.blocked).toBeUndefined();
    await holder.settle('succeeded');
    await new Promise((r) => setTimeout(r, 1200));
    // A new window: one more failure is one of three allowed, and the holder gets in.
    await (await l.authAttempt('198.51.100.9', 'v@x.test', limits)).settle('failed');
    expect((await l.authAttempt('203.0.113.5', 'v@x.test', limits)).blocked).toBeUndefined();
  });

  it('more logins of one account at once than the limit lets fail: the extra ones wait a moment, and nothing is blocked', async () => {
    const l = limiter();
    const limits = { failures_per_ip: { limit: 100, window: 60_000, block: 600_000 }, failures_per_account: { limit: 3, window: 60_000, block: 600_000 } };
    // Twenty sessions of one account log in at once, with the right password.
    const attempts = await Promise.all(Array.from({ length: 20 }, () => l.authAttempt('203.0.113.5', 'busy@x.test', limits)));
    expect(attempts.filter((a) => !a.blocked)).toHaveLength(4);
    const waiting = attempts.filter((a) => a.blocked);
    expect(waiting).toHaveLength(16);
    for (const a of waiting) expect(a).toMatchObject({ blocked: 'account', busy: true });
    for (const a of attempts) await a.settle(a.blocked ? 'not_tried' : 'succeeded');
    // Landed: the ones that waited get in, one after another or four at a time, for as long as they like.
    for (let round = 0; round < 5; round++) {
      const again = await Promise.all(Array.from({ length: 4 }, () => l.authAttempt('203.0.113.5', 'busy@x.test', limits)));
      expect(again.map((a) => a.blocked)).toEqual([undefined, undefined, undefined, undefined]);
      for (const a of again) await a.settle('succeeded');
    }
    // Failures still block at the limit, as before: four tries, then the block.
    expect((await failUntilBlocked(l, '198.51.100.1', 'busy@x.test', limits)).tried).toBe(4);
    expect(await l.authAttempt('203.0.113.5', 'busy@x.test', limits)).toMatchObject({ blocked: 'account', retryAfter: 600 });
  });

  it('logins that worked, landing while another is checked, never look like failures to it', async () => {
    const l = limiter();
    const limits = { failures_per_ip: { limit: 100, window: 60_000, block: 600_000 }, failures_per_account: { limit: 3, window: 60_000, block: 600_000 } };
    for (let round = 0; round < 20; round++) {
      const four = await Promise.all(Array.from({ length: 4 }, () => l.authAttempt('203.0.113.5', 'holder@x.test', limits)));
      expect(four.map((a) => a.blocked)).toEqual([undefined, undefined, undefined, undefined]);
      // Three land while a fifth comes: told to wait at worst, never blocked.
      const landing = four.slice(0, 3).map((a) => a.settle('succeeded'));
      const fifth = await l.authAttempt('203.0.113.5', 'holder@x.test', limits);
      expect(fifth.busy ?? !fifth.blocked, `round ${round}`).toBe(true);
      await Promise.all(landing);
      await fifth.settle(fifth.blocked ? 'not_tried' : 'succeeded');
      await four[3]!.settle('succeeded');
    }
    // Two typos, then the right password on four connections at once, and a fifth: nothing is blocked.
    for (let i = 0; i < 2; i++) await (await l.authAttempt('203.0.113.5', 'holder@x.test', limits)).settle('failed');
    const logins = await Promise.all(Array.from({ length: 2 }, () => l.authAttempt('203.0.113.5', 'holder@x.test', limits)));
    const landing = logins.map((a) => a.settle('succeeded'));
    const another = await l.authAttempt('203.0.113.5', 'holder@x.test', limits);
    await Promise.all(landing);
    expect(another.busy ?? !another.blocked).toBe(true);
    await another.settle(another.blocked ? 'not_tried' : 'succeeded');
    expect((await l.authAttempt('203.0.113.5', 'holder@x.test', limits)).blocked).toBeUndefined();
  });

  it('one wrong password among logins in flight blocks nothing: only failures settled count', async () => {
    const l = limiter();
    // An account's phone with an old password, among its other logins.
    const limits = { failures_per_ip: { limit: 5, window: 60_000, block: 600_000 }, failures_per_account: { limit: 2, window: 60_000, block: 600_000 } };
    const three = await Promise.all(Array.from({ length: 3 }, () => l.authAttempt('203.0.113.5', 'holder@x.test', limits)));
    expect((await three[0]!.settle('failed')).accountBlockedNow).toBe(false);
    for (const a of three.slice(1)) await a.settle('succeeded');
    expect((await l.authAttempt('203.0.113.5', 'holder@x.test', limits)).blocked).toBeUndefined();
    // Six colleagues behind one address, one typo: the address is not blocked.
    const office = await Promise.all(Array.from({ length: 6 }, (_, i) => l.authAttempt('198.51.100.7', `colleague${i}@x.test`, limits)));
    await office[0]!.settle('failed');
    for (const a of office.slice(1)) await a.settle('succeeded');
    expect((await l.authAttempt('198.51.100.7', 'colleague9@x.test', limits)).blocked).toBeUndefined();
  });

  it('failures in flight with others: those past the limit wait; once the failures land, the block follows', async () => {
    const l = limiter();
    const limits = { failures_per_ip: { limit: 100, window: 60_000, block: 600_000 }, failures_per_account: { limit: 3, window: 60_000, block: 600_000 } };
    const attempts = await Promise.all(Array.from({ length: 10 }, () => l.authAttempt('198.51.100.1', 'v@x.test', limits)));
    expect(attempts.filter((a) => a.busy)).toHaveLength(6);
    const tried = attempts.filter((a) => !a.blocked);
    const settled = await Promise.all(tried.map((a) => a.settle('failed')));
    expect(settled.filter((s) => s.accountBlockedNow)).toHaveLength(1);
    const next = await l.authAttempt('198.51.100.1', 'v@x.test', limits);
    expect(next.busy).toBeUndefined();
    expect(next).toMatchObject({ blocked: 'account', retryAfter: 600 });
  });

  it('a limit lowered below the failures already counted blocks for the whole block, from the next attempt', async () => {
    const l = limiter();
    const before = { failures_per_ip: { limit: 100, window: 60_000, block: 0 }, failures_per_account: { limit: 10, window: 60_000, block: 1_800_000 } };
    for (let i = 0; i < 5; i++) await (await l.authAttempt('198.51.100.9', 'v@x.test', before)).settle('failed');
    const after = { ...before, failures_per_account: { ...before.failures_per_account, limit: 3 } };
    const refused = await l.authAttempt('203.0.113.5', 'v@x.test', after);
    expect(refused.blocked).toBe('account');
    expect(refused.retryAfter).toBeGreaterThan(1700);
  });

  it('counts an IPv6 client\'s failures by its /64, where it could take a new address for every attempt', async () => {
    const l = limiter();
    const limits = { failures_per_ip: { limit: 3, window: 60_000, block: 60_000 }, failures_per_account: { limit: 100, window: 60_000, block: 60_000 } };
    for (let i = 1; i <= 4; i++) await (await l.authAttempt(`2001:db8:7:1::${i.toString(16)}`, `user${i}@x.test`, limits)).settle('failed');
    expect((await l.authAttempt('2001:db8:7:1:ffff:ffff:ffff:fffe', 'other@x.test', limits)).blocked).toBe('ip');
    // The next /64, and an IPv4 client, are others.
    expect((await l.authAttempt('2001:db8:7:2::1', 'other@x.test', limits)).blocked).toBeUndefined();
    expect((await l.authAttempt('192.0.2.1', 'other@x.test', limits)).blocked).toBeUndefined();
    expect(clientNetwork('2001:DB8:0:1::25')).toBe('2001:db8:0:1::/64');
    expect(clientNetwork('::1')).toBe('0:0:0:0::/64');
    expect(clientNetwork('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(clientNetwork('192.0.2.7')).toBe('192.0.2.7');
  });

  it('an attempt the upstream could not check, settled after a login worked, gives back its own point only', async () => {
    const l = limiter();
    const limits = { failures_per_ip: { limit: 100, window: 60_000, block: 0 }, failures_per_account: { limit: 3, window: 60_000, block: 60_000 } };
    const unchecked = await l.authAttempt('198.51.100.1', 'v@x.test', limits);
    await (await l.authAttempt('203.0.113.5', 'v@x.test', limits)).settle('succeeded');
    await unchecked.settle('not_tried');
    expect((await failUntilBlocked(l, '198.51.100.1', 'v@x.test', limits)).tried).toBe(4);
  });
});
